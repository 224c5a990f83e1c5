"""The CUDA paths: AMP training, router training, routed inference in fp32 and fp16, the route read
once per batch, export from a CUDA model.

Marked ``cuda`` and skipped (with that reason) where PyTorch sees no GPU; on a GPU machine run
``python -m pytest -m cuda`` or ``bash scripts/gpu_check.sh`` (these tests and a short GPU
benchmark). One short stage-1 run on the GPU is shared by the module.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import detect
import export
import test as test_script
import train
import train_router
from data.make_demo_data import make_demo_dataset
from dydet import DyDet
from models.yolo import build_model
from tests.conftest import REPO
from utils.runtime.onnx_model import OnnxModel
from utils.export.parity import difference
from utils.torch_utils import full_fp32
from utils.weights.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() "
                                                                       "is False)")]

DEVICE = "0"
IMG = 128
NAMES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("cuda-data"), n_train=16, n_val=8, img_size=IMG, seed=0)


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory) -> dict:
    """Stage 1 of dy-yolov7-tiny for two short epochs on the GPU, with AMP (as train.py runs on CUDA)."""
    root = tmp_path_factory.mktemp("cuda-train")
    hyp = yaml.safe_load((REPO / "data" / "hyp.scratch.tiny.yaml").read_text(encoding="utf-8"))
    (root / "hyp.yaml").write_text(yaml.safe_dump({**hyp, "nbs": 8}), encoding="utf-8")  # a step per batch
    return train.run(cfg="dy-yolov7-tiny", data=str(data), hyp=str(root / "hyp.yaml"), img_size=IMG, epochs=2,
                     batch_size=8, workers=0, device=DEVICE, project=str(root), name="amp", noval=True, plots=False)


def _mixed_threshold(phi: torch.Tensor) -> float:
    """A threshold between the lowest and the highest φ (both routes taken)."""
    s = phi.float().sort().values
    assert float(s[-1] - s[0]) > 0, "the router gives every image the same φ"
    return float(s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def test_amp_training_moves_the_ema_and_saves_a_device_free_checkpoint(trained: dict) -> None:
    rows = list(csv.DictReader(open(trained["save_dir"] / "results.csv")))
    assert [int(float(r["epoch"])) for r in rows] == [0, 1]
    losses = [float(v) for r in rows for k, v in r.items() if k.startswith("train/")]
    assert losses and all(math.isfinite(v) for v in losses), rows
    ckpt = read_checkpoint(trained["last"])  # CPU tensors (weights_only)
    assert ckpt["scaler"]["scale"] > 0  # AMP's GradScaler ran, and its state is kept for --resume
    torch.manual_seed(0)  # train.run seeds with --seed 0 right before building the model
    first = build_model("dy-yolov7-tiny", names=NAMES).state_dict()
    floats = [k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1]
    moved = [k for k in floats if not torch.equal(ckpt["model"][k], first[k].to(ckpt["model"][k].dtype))]
    assert len(moved) > len(floats) // 2, "the EMA weights did not move"
    on_cpu, _ = load_checkpoint(trained["last"], device="cpu")
    on_gpu, _ = load_checkpoint(trained["last"], device="cuda")
    assert next(on_gpu.parameters()).is_cuda
    for (k, a), b in zip(on_cpu.state_dict().items(), on_gpu.state_dict().values()):
        assert torch.equal(a, b.cpu()), k
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad(), full_fp32():
        ref = on_cpu.float().eval()(x, threshold=0.0)
        got = on_gpu.float().eval()(x.cuda(), threshold=0.0)
    assert difference(got, ref) < 1e-3


def test_dynamicdet_router_trains_on_the_gpu(trained: dict, data: Path, tmp_path: Path) -> None:
    out = train_router.run(weights=str(trained["last"]), data=str(data), img_size=IMG, epochs=2, batch_size=4,
                           workers=0, device=DEVICE, project=str(tmp_path), name="router", lr=1e-3)
    before, after = read_checkpoint(trained["last"])["model"], read_checkpoint(out["last"])["model"]
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith("router.") for k in changed), changed[:5]


def test_dualres_router_trains_on_the_gpu(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = save_checkpoint(tmp_path / "plain.pt", build_model("yolov7-tiny", names=NAMES), names=NAMES)
    before = read_checkpoint(plain)["model"]
    out = train_router.run(router="dualres", weights=str(plain), data=str(data), img_size=IMG, epochs=2,
                           batch_size=4, workers=0, device=DEVICE, project=str(tmp_path), name="dualres", lr=3e-2)
    state = read_checkpoint(out["last"])["model"]
    assert all(torch.equal(state[f"detector.{k}"], v) for k, v in before.items())  # the detector stays frozen
    router = [k for k in state if k.startswith("router.") and state[k].is_floating_point()]
    assert router and read_checkpoint(out["last"])["thresholds"]["table"]


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_a_mixed_batch_on_the_gpu_equals_each_image_alone(trained: dict, half: bool) -> None:
    model = DyDet(trained["last"], device=DEVICE, half=half).model
    dtype = torch.float16 if half else torch.float32
    assert next(model.parameters()).dtype == dtype
    x = torch.rand(8, 3, IMG, IMG, generator=torch.Generator().manual_seed(1)).cuda().to(dtype)
    x[::2] *= 0.2  # darker images: φ spreads
    with torch.no_grad(), full_fp32():
        t = _mixed_threshold(model.difficulty(x))
        batch = model(x, threshold=t)
        alone = [model(x[i:i + 1], threshold=t) for i in range(len(x))]
    assert 0 < int(batch.hard.sum()) < len(x)
    assert torch.equal(batch.hard.cpu(), torch.cat([a.hard for a in alone]).cpu())
    tol = 2e-2 if half else 1e-3  # fp16 kernels for another batch size sum in another order
    for i, a in enumerate(alone):
        assert difference(batch.pred[i:i + 1], a.pred) < tol, i


def test_the_route_is_read_on_the_host_once_per_batch(trained: dict) -> None:
    model, _ = load_checkpoint(trained["last"], device="cuda")
    model = model.float().fuse().eval()
    x = torch.rand(8, 3, IMG, IMG, generator=torch.Generator().manual_seed(2)).cuda()
    x[::2] *= 0.2
    with torch.no_grad():
        phi = model.difficulty(x)
        t = _mixed_threshold(phi)
        order = phi.argsort().cpu()
        syncs = {}
        for name, batch in (("2 images", x[order[[0, -1]]]), ("8 images", x)):  # both mixed
            model(batch, threshold=t)  # warm-up: lazy CUDA and cuDNN set-up is not the route's
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    model(batch, threshold=t)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs[name] = sum("synchroniz" in str(w.message) for w in caught)
    assert syncs["2 images"] == syncs["8 images"] <= 2, syncs


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_detect_test_and_api_on_the_gpu(trained: dict, data: Path, tmp_path: Path, half: bool) -> None:
    images = data.parent / "images" / "val"
    summary = detect.run(weights=str(trained["last"]), source=str(images), device=DEVICE, half=half,
                                       project=str(tmp_path), name="detect", batch_size=4, dy_thres=0.5)
    assert summary, summary
    kw = dict(weights=str(trained["last"]), data=str(data), img_size=IMG, batch_size=4, workers=0, plots=False,
              project=str(tmp_path), dy_thres=0.5)
    gpu = test_script.run(device=DEVICE, half=half, name="gpu", **kw)
    cpu = test_script.run(device="cpu", name="cpu", **kw)
    assert abs(gpu["map50"] - cpu["map50"]) < 0.02, (gpu["map50"], cpu["map50"])
    api = DyDet(trained["last"], device=DEVICE, half=half)
    results = api.predict(str(images), batch_size=4)
    assert results and all(r.route in ("easy", "hard") for r in results)


def test_export_from_a_cuda_model_matches_the_cpu_model(trained: dict, tmp_path: Path) -> None:
    out = export.run(weights=str(trained["last"]), device=DEVICE, img_size=IMG, thres_input=True,
                     output=str(tmp_path / "dy"))
    onnx_model = OnnxModel(out["onnx"])
    ref = load_checkpoint(trained["last"], device="cpu")[0].float().fuse().eval()
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        for t in (1.0, 0.0):  # each route
            assert difference(onnx_model(x, threshold=t), ref(x, threshold=t)) < 1e-3, t
