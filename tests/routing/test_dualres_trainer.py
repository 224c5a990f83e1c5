"""DualRes router training: samples collected once, objective goes down, frozen detector, resume, DDP, calibration."""
from __future__ import annotations

import copy
import csv
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from data.make_demo_data import make_demo_dataset
from models.dualres import DualResModel
from models.resolution_router import ResolutionRouter
from models.yolo import build_model
from utils.data.config import hyp_for, load_data_config
from utils.data.datasets import create_dataloader
from utils.routing.dualres_cache import DualResSamples, collect_samples, raw_outputs, to_uint8
from utils.routing.dualres_trainer import (
    DualResOptions,
    DualResTrainer,
    loss_curve_auc,
    samples_phi,
)
from utils.routing.gumbel import dualres_objective
from utils.torch_utils import DistInfo
from utils.weights.checkpoints import load_checkpoint
from utils.train.loss import ComputeLoss, scale_loss_gains

IMG, THUMB = 64, 32
CPU = torch.device("cpu")


def dualres(cfg: str = "yolov7-tiny", **kwargs) -> DualResModel:
    torch.manual_seed(0)
    det = build_model(cfg, nc=4)
    with torch.no_grad():
        det.train()(torch.rand(4, 3, IMG, IMG))  # BN statistics away from their init
    return DualResModel(det, ResolutionRouter("thumb", THUMB, width=8), **kwargs)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("dualres")
    data = load_data_config(make_demo_dataset(root / "demo", n_train=6, n_val=2, img_size=IMG, seed=3))
    loader, _ = create_dataloader(data.train, IMG, 3, 32, workers=0, cache_dir=root)
    return SimpleNamespace(loader=loader, root=root)


def loss_for(model: DualResModel) -> ComputeLoss:
    det = model.detector
    return ComputeLoss(det, scale_loss_gains(hyp_for(det), det.heads[0].nl, det.nc, IMG))


def toy_samples(n: int = 64, seed: int = 0) -> DualResSamples:
    """Bright thumbnails gain a lot from high resolution, dark ones nothing (high is even a bit worse)."""
    g = torch.Generator().manual_seed(seed)
    bright = torch.arange(n) % 2 == 0
    level = torch.where(bright, 0.75, 0.25).view(n, 1, 1, 1)
    thumbs = to_uint8(level + 0.15 * torch.randn(n, 3, THUMB, THUMB, generator=g))
    l_low = torch.where(bright, 1.0, 0.3) + 0.02 * torch.rand(n, generator=g)
    l_high = torch.where(bright, 0.2, 0.35) + 0.02 * torch.rand(n, generator=g)
    return DualResSamples(thumbs, l_low, l_high, [f"im{i:03d}" for i in range(n)])


def options(**kwargs) -> DualResOptions:
    base = DualResOptions(epochs=3, batch_size=16, lr=0.05, img_size=IMG, latency_reps=0)
    return replace(base, **kwargs)


def trainer(model: DualResModel, save_dir: Path, opt: DualResOptions | None = None, **kwargs) -> DualResTrainer:
    train = toy_samples()
    return DualResTrainer(model, opt or options(), train, toy_samples(seed=1), save_dir, CPU, costs={}, **kwargs)


def routed_objective(model: DualResModel, samples: DualResSamples, t: DualResTrainer) -> float:
    """The objective with each image's deterministic route (φ > 0.5)."""
    hard = (samples_phi(model.router, samples, CPU) > 0.5).float()
    s = t.loss_scale
    return float(dualres_objective(hard, samples.l_low / s, samples.l_high / s, t.opt.gamma, t.opt.theta).loss)


# ---- samples ---------------------------------------------------------------------------
def test_samples_equal_the_detector_on_each_image_at_both_sizes(demo) -> None:
    model = dualres()
    compute_loss = loss_for(model)
    samples = collect_samples(model, demo.loader, compute_loss, CPU, show=False)
    assert len(samples) == 6 and samples.thumbs.dtype == torch.uint8 and samples.thumbs.shape[1:] == (3, THUMB, THUMB)
    det = model.detector
    for imgs, targets, paths, _ in demo.loader:
        x = imgs.float() / 255
        for i, path in enumerate(paths):
            t = targets[targets[:, 0] == i].clone()
            t[:, 0] = 0
            xi = x[i:i + 1]
            x_low = F.interpolate(xi, size=(IMG // 2, IMG // 2), mode="bilinear", align_corners=False)
            with torch.no_grad(), raw_outputs(det):
                high, _ = compute_loss(det(xi), t, xi)  # mean reduction of a batch of one image
                low, _ = compute_loss(det(x_low), t, x_low)  # targets are normalised; pixel size from x_low
            k = samples.keys.index(str(path))
            torch.testing.assert_close(samples.l_high[k], high, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(samples.l_low[k], low, rtol=1e-4, atol=1e-6)
            assert torch.equal(samples.thumbs[k:k + 1], to_uint8(F.interpolate(xi, size=(THUMB, THUMB),
                                                                              mode="bilinear", align_corners=False)))
    assert not det.training  # raw_outputs restored eval mode
    assert float(samples.gain.abs().sum()) > 0


def test_dy_detector_samples_take_the_inner_route(demo) -> None:
    for inner, row in ((0.0, 1), (1.0, 0)):
        model = dualres("dy-yolov7-tiny", inner_threshold=inner)
        compute_loss = loss_for(model)
        imgs, targets, paths, _ = next(iter(demo.loader))
        samples = collect_samples(model, [(imgs, targets, paths, None)], compute_loss, CPU, show=False)
        x = imgs.float() / 255
        with torch.no_grad(), raw_outputs(model.detector) as det:
            want = compute_loss(det(x), targets, x, reduction="none")[row]
        torch.testing.assert_close(samples.l_high, want, rtol=1e-4, atol=1e-6)


def test_gather_without_ddp_orders_by_key_and_drops_repeats() -> None:
    s = toy_samples(6)
    mixed = s.subset(torch.tensor([3, 1, 1, 5, 0, 2, 4]))
    out = mixed.gather(DistInfo())
    assert out.keys == s.keys and torch.equal(out.thumbs, s.thumbs) and torch.equal(out.l_low, s.l_low)


# ---- training ---------------------------------------------------------------------------
def test_training_lowers_the_objective_and_ranks_the_images(tmp_path: Path) -> None:
    model = dualres()
    t = trainer(model, tmp_path, options(epochs=4))
    before = routed_objective(model, t.val, t)
    metrics = t.fit()
    after = routed_objective(model, t.val, t)
    assert after < before - 0.05
    oracle = loss_curve_auc(t.val.gain, t.val)  # φ ranked by the true gain of high resolution
    assert metrics["loss_auc"] > oracle - 0.01 and oracle > 0.7
    phi = samples_phi(model.router, t.val, CPU)
    assert float(phi[::2].min()) > float(phi[1::2].max())  # every gaining (bright) image above every other
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(4))
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])


def test_detector_stays_bit_identical(tmp_path: Path) -> None:
    model = dualres("dy-yolov7-tiny")
    det_before = {k: v.clone() for k, v in model.detector.state_dict().items()}
    router_before = {k: v.clone() for k, v in model.router.state_dict().items()}
    trainer(model, tmp_path, options(epochs=2)).fit()
    for k, v in model.detector.state_dict().items():
        assert torch.equal(v, det_before[k]), k
    assert any(not torch.equal(v, router_before[k]) for k, v in model.router.state_dict().items())


def test_resume_continues_to_the_same_state(tmp_path: Path) -> None:
    straight = dualres()
    ref = trainer(copy.deepcopy(straight), tmp_path / "a")
    ref.fit()
    first = trainer(copy.deepcopy(straight), tmp_path / "b")
    first.epochs = 1  # stopped after epoch 0 (the cosine still spans 3 epochs)
    first.fit()
    model, info = load_checkpoint(tmp_path / "b" / "weights" / "last.pt")
    resumed = trainer(model, tmp_path / "b")
    resumed.restore(info["extra"])
    assert resumed.progress.epoch == 1
    resumed.fit()
    for k, v in ref.model.router.state_dict().items():
        torch.testing.assert_close(model.router.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(ref.optimizer.param_groups[0]["lr"])
    momentum = [s["momentum_buffer"] for s in resumed.optimizer.state.values()]
    for a, b in zip(momentum, [s["momentum_buffer"] for s in ref.optimizer.state.values()]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with open(tmp_path / "b" / "results.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_ddp_router_trains_as_without(tmp_path: Path) -> None:
    base = dualres()
    ref = trainer(copy.deepcopy(base), tmp_path / "plain", options(epochs=2))
    ref.fit()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = trainer(copy.deepcopy(base), tmp_path / "ddp", options(epochs=2), dist=DistInfo(0, 0, 1))
        assert isinstance(ddp.router, torch.nn.parallel.DistributedDataParallel)
        ddp.fit()
    finally:
        dist.destroy_process_group()
    for k, v in ref.model.router.state_dict().items():
        torch.testing.assert_close(ddp.model.router.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_checkpoint_stores_the_calibration_with_route_costs(tmp_path: Path) -> None:
    model = dualres()
    t = DualResTrainer(model, options(epochs=1, latency_reps=1), toy_samples(), toy_samples(seed=1), tmp_path, CPU)
    t.fit()
    _, info = load_checkpoint(tmp_path / "weights" / "best.pt")  # img_size stored with the model
    calib = info["thresholds"]
    assert len(calib["table"]) == 101 and calib["table"][0] == 1.0 and calib["table"][100] == 0.0
    assert calib["img_size"] == IMG and calib["n_images"] == 64 and info["img_size"] == IMG
    assert 0 < calib["gflops"]["easy"] < calib["gflops"]["hard"]
    assert calib["latency_ms"]["easy"] > 0 and calib["latency_ms"]["hard"] > 0
    phi = samples_phi(model.router, t.val, CPU)
    assert abs(float((phi > calib["table"][30]).float().mean()) - 0.3) < 0.05


def test_normalised_losses_make_training_independent_of_the_loss_scale(tmp_path: Path) -> None:
    base = dualres()
    routers = []
    for k, factor in enumerate((1.0, 100.0)):
        train = toy_samples()
        train.l_low, train.l_high = train.l_low * factor, train.l_high * factor
        t = DualResTrainer(copy.deepcopy(base), options(epochs=1), train, None, tmp_path / str(k), CPU, costs={})
        t.fit()
        assert t.loss_scale == pytest.approx(float(train.gain.abs().mean()))
        routers.append(t.model.router.state_dict())
    for key, v in routers[0].items():
        torch.testing.assert_close(routers[1][key], v, rtol=1e-4, atol=1e-6)
