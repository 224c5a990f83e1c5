"""Router samples: collected once, equal to running the frozen model, and enough to train on."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data.make_demo_data import make_demo_dataset
from models.yolo import build_model
from utils.data.config import hyp_for, load_data_config
from utils.data.datasets import create_dataloader
from utils.routing.dynamicdet_cache import RouterSamples, collect_samples
from utils.routing.samples import epoch_batches
from utils.routing.loss import router_objective
from tests.routing.batches import route_batch, to_batch
from utils.routing.dynamicdet_trainer import PooledRouter, RouterLoop, RouterTrainer, frozen_mode
from utils.torch_utils import DistInfo
from utils.train.loss import ComputeLoss, scale_loss_gains

IMG = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("cache")
    data = load_data_config(make_demo_dataset(root / "demo", n_train=6, n_val=2, img_size=IMG, seed=3))
    torch.manual_seed(0)
    model = build_model("dy-yolov7-tiny", names=data.names)
    with torch.no_grad():
        model.train()(torch.rand(4, 3, IMG, IMG))  # BN statistics away from their init
    frozen_mode(model)
    loss = ComputeLoss(model, scale_loss_gains(hyp_for(model), model.heads[0].nl, model.nc, IMG))
    loader, _ = create_dataloader(data.train, IMG, 4, 32, workers=0, cache_dir=root)
    return SimpleNamespace(model=model, loss=loss, loader=loader, root=root)


def test_samples_equal_running_the_model_on_each_image(setup) -> None:
    samples = collect_samples(setup.model, setup.loader, setup.loss, torch.device("cpu"), show=False)
    assert len(samples) == 6 and samples.pooled.shape == (6, sum(setup.model.router.channels))
    router = PooledRouter(setup.model.router)
    for imgs, targets, paths, _ in setup.loader:
        imgs, targets = to_batch(imgs, targets, torch.device("cpu"))
        for i, path in enumerate(paths):
            t = targets[targets[:, 0] == i].clone()
            t[:, 0] = 0
            with torch.no_grad():
                ref = route_batch(setup.model, router, imgs[i:i + 1], t, setup.loss)
                phi = setup.model.difficulty(imgs[i:i + 1])  # the model's own φ, straight from the image
            k = samples.keys.index(str(path))
            torch.testing.assert_close(router(samples.pooled[k:k + 1]).sigmoid(), phi, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(samples.l1[k:k + 1], ref.l1, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(samples.l2[k:k + 1], ref.l2, rtol=1e-4, atol=1e-6)


def test_a_step_on_samples_has_the_gradient_of_a_step_on_images(setup) -> None:
    model, device = setup.model, torch.device("cpu")
    imgs, targets, paths, _ = next(iter(setup.loader))
    imgs, targets = to_batch(imgs, targets, device)
    router = PooledRouter(model.router)
    on_images = route_batch(model, router, imgs, targets, setup.loss)
    loss_images = router_objective("adaptive", on_images.phi, on_images.l1, on_images.l2, 0.01)
    grads_images = torch.autograd.grad(loss_images, list(model.router.parameters()))
    samples = collect_samples(model, [(imgs.mul(255).round().byte(), targets, paths, None)], setup.loss, device,
                              show=False)
    phi = router(samples.pooled).sigmoid()
    loss_samples = router_objective("adaptive", phi, samples.l1, samples.l2, 0.01)
    grads_samples = torch.autograd.grad(loss_samples, list(model.router.parameters()))
    torch.testing.assert_close(loss_samples, loss_images, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads_samples, grads_images):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_training_epochs_never_run_the_detectors(setup, tmp_path: Path, monkeypatch) -> None:
    model = setup.model
    samples = collect_samples(model, setup.loader, setup.loss, torch.device("cpu"), show=False)
    opt = RouterLoop(epochs=3, batch_size=4, img_size=IMG, lr=1e-2, weight_decay=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def forbidden(*args, **kwargs):
        raise AssertionError("a training epoch ran the detectors")
    for name in ("backbone1", "detector1", "detector2", "forward"):
        monkeypatch.setattr(model, name, forbidden)
    trainer = RouterTrainer(model, opt, 0.0, samples, samples, tmp_path, torch.device("cpu"),
                            costs={"easy_ms": 1.0, "hard_ms": 2.0, "easy_gflops": 1.0, "hard_gflops": 2.0})
    metrics = trainer.fit()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("router."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("router."))
    assert len(metrics["phi"]) == 6 and (tmp_path / "weights" / "last.pt").is_file()


def test_epoch_batches_shuffle_cover_and_split_evenly() -> None:
    single = DistInfo()
    e0 = torch.cat(epoch_batches(10, 4, 0, 0, single))
    assert sorted(e0.tolist()) == list(range(10))
    assert [len(b) for b in epoch_batches(10, 4, 0, 0, single)] == [4, 4, 2]
    assert torch.equal(e0, torch.cat(epoch_batches(10, 4, 0, 0, single)))  # reproducible
    assert not torch.equal(e0, torch.cat(epoch_batches(10, 4, 1, 0, single)))  # reshuffled each epoch
    ranks = [epoch_batches(5, 2, 0, 0, DistInfo(rank=r, local_rank=r, world_size=2)) for r in (0, 1)]
    assert [sum(len(b) for b in r) for r in ranks] == [3, 3]  # padded: both ranks take the same steps
    assert {i for r in ranks for b in r for i in b.tolist()} == set(range(5))


def test_gather_keeps_each_image_once_in_path_order() -> None:
    pooled = torch.arange(8.0).reshape(4, 2)
    s = RouterSamples(pooled, torch.tensor([1.0, 2, 3, 1]), torch.zeros(4), ["b.jpg", "a.jpg", "c.jpg", "b.jpg"])
    g = s.gather(DistInfo())
    assert g.keys == ["a.jpg", "b.jpg", "c.jpg"] and g.l1.tolist() == [2.0, 1.0, 3.0]
    assert torch.equal(g.pooled, pooled[[1, 0, 2]])
    assert g.subset(torch.tensor([2, 0])).keys == ["c.jpg", "a.jpg"]


def test_small_data_epochs_pass_over_the_samples_several_times() -> None:
    from utils.routing.samples import epochs_for
    single = DistInfo()
    batches = epoch_batches(10, 4, 0, 0, single, min_samples=25)  # 3 passes of 10
    order = torch.cat(batches)
    assert len(order) == 30 and sorted(order.tolist()) == sorted(list(range(10)) * 3)
    assert not torch.equal(order[:10], order[10:20])  # each pass shuffled anew
    ranks = [torch.cat(epoch_batches(10, 4, 0, 0, DistInfo(rank=r, local_rank=r, world_size=4), min_samples=25))
             for r in range(4)]
    assert {len(r) for r in ranks} == {8}  # 30 padded to 32, split evenly
    assert epochs_for(50_000, 800, 8, 4_000, 2) == 100  # 500 steps per epoch
    assert epochs_for(50_000, 118_000, 8, 4_000, 2) == 4  # COCO: one pass an epoch
    assert epochs_for(100, 80, 8, 4_000, 2) == 2  # at least min_epochs
