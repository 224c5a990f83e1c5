"""OpenVINO export and backend: one If, parity with PyTorch per route, per-image routing of a
dynamic batch, metadata, atomic folders, bf16 only where the CPU has it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("openvino")

import export  # noqa: E402
from models.yolo import build_model  # noqa: E402
from utils import cpu  # noqa: E402
from utils.export import openvino as ovx  # noqa: E402
from utils.runtime.onnx_model import OnnxModel  # noqa: E402
from utils.export.parity import difference  # noqa: E402
from utils.weights.checkpoints import save_checkpoint  # noqa: E402

SIZE = 64
ATOL = 1e-3


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.long(35)]  # long: the whole file, on 2 cores


def spread_router(model: torch.nn.Module, size: int = SIZE) -> torch.nn.Module:
    """Random weights whose router gives the probe images φ spread around 0.5."""
    model.eval()
    with torch.no_grad():
        x = ovx.probe_inputs((size, size), 8)
        feats, _ = model.backbone1(x)
        logits = model.router.logits(model.router_inputs(feats))
        model.router.layer2.weight.mul_(6.0 / float(logits.max() - logits.min()))
        logits = model.router.logits(model.router_inputs(feats))
        model.router.layer2.bias.sub_(float(logits.median()) + 0.3 * float(logits.std()))
    return model


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = spread_router(build_model("dy-yolov7-tiny", nc=4))
    return save_checkpoint(path, model, names=model.names)


def reference(ckpt: Path) -> torch.nn.Module:
    from utils.weights.backends import load_model
    return load_model(ckpt, device="cpu")[0].float().fuse().eval().requires_grad_(False)


def parity_with_torch(backend, model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """max |backend - PyTorch| with every image easy (threshold 1) and every image hard (0)."""
    out = {}
    with torch.no_grad():
        for route, t in (("easy", 1.0), ("hard", 0.0)):
            out[route] = difference(backend(x, threshold=t), model(x, threshold=t))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny checkpoint, its batch-1 and dynamic-batch ONNX exports and their OpenVINO IRs."""
    root = tmp_path_factory.mktemp("openvino")
    ckpt = tiny_checkpoint(root / "dy.pt")
    one = Path(export.run(weights=str(ckpt), img_size=SIZE, output=str(root / "dy"))["onnx"])
    many = Path(export.run(weights=str(ckpt), img_size=SIZE, dynamic_batch=True, output=str(root / "dyb"))["onnx"])
    return {"root": root, "pt": ckpt, "onnx": one, "onnx_batch": many, "model": reference(ckpt),
            "ir": ovx.export_openvino(one), "ir_batch": ovx.export_openvino(many, check=False),
            "converted": ovx.convert_onnx(one)}


def test_ir_folder_keeps_one_if_and_the_metadata(exported: dict) -> None:
    ir = exported["ir"]
    assert ir == exported["onnx"].with_name("dy_openvino") and ir.is_dir()
    assert sorted(p.name for p in ir.iterdir()) == ["dy.bin", "dy.xml", "metadata.json"]
    import openvino as ov
    model = ov.Core().read_model(str(ir / "dy.xml"))
    assert ovx.count_ops(model, "If") == 1  # the route: one conditional, as in the ONNX graph
    bodies = dict(ovx.if_bodies(model))
    assert len(bodies) == 2 and all(ovx.count_ops(b, "Convolution") > 0 for b in bodies.values())
    meta = json.loads((ir / "metadata.json").read_text())
    assert json.loads(model.get_rt_info(ovx.RT_INFO_PATH).astype(str)) == meta  # the .xml alone suffices
    onnx_meta = ovx.onnx_metadata(onnx.load(str(exported["onnx"]), load_external_data=False))
    for key in ("names", "stride", "img_size", "batch", "dynamic", "threshold", "thresholds", "gflops"):
        assert meta[key] == onnx_meta[key]
    assert meta["format"] == ovx.FORMAT and meta["openvino"]["if_count"] == 1


def test_matches_pytorch_on_each_route(exported: dict) -> None:
    backend = ovx.OpenVinoModel(exported["ir"], threads=1)
    x = ovx.probe_inputs((SIZE, SIZE), 4)
    diffs = parity_with_torch(backend, exported["model"], x)
    assert set(diffs) == {"easy", "hard"} and max(diffs.values()) <= ATOL, diffs
    assert backend(x, threshold=1.0).hard.sum() == 0 and backend(x, threshold=0.0).hard.all()


def test_same_calling_convention_as_onnx_model(exported: dict) -> None:
    got, ref = ovx.OpenVinoModel(exported["ir"] / "dy.xml"), OnnxModel(exported["onnx"])
    for attr in ("names", "img_size", "batch", "is_dynamic", "route", "threshold", "threshold_input",
                 "end2end", "gflops", "fused", "training"):
        assert getattr(got, attr) == getattr(ref, attr), attr
    assert torch.equal(got.stride, ref.stride) and got.eval() is got
    assert got.info["format"] == "openvino" and got.info["names"] == ref.info["names"]
    x = ovx.probe_inputs((SIZE, SIZE), 3)  # a static batch of 1 runs any batch in chunks
    out = got(x, threshold=0.5)
    assert out.pred.shape == ref(x, threshold=0.5).pred.shape and out.phi.shape == (3,) and out.hard.dtype == torch.bool
    with pytest.raises(ValueError, match=r"exported for 64x64 inputs but got 96x64"):
        got(torch.zeros(1, 3, 96, 64))
    with pytest.raises(RuntimeError, match="cannot be trained"):
        got.train()


def test_dynamic_batch_routes_each_image_as_alone(exported: dict) -> None:
    backend, model = ovx.OpenVinoModel(exported["ir_batch"]), exported["model"]
    assert backend.batch is None
    x = ovx.probe_inputs((SIZE, SIZE), 6)
    phi = backend(x, threshold=1.0).phi.sort().values
    thr = float(phi[2] + phi[3]) / 2  # three easy, three hard
    out = backend(x, threshold=thr)
    with torch.no_grad():
        ref = model(x, threshold=thr)
    assert 0 < int(out.hard.sum()) < len(x) and torch.equal(out.hard, ref.hard)
    assert difference(out, ref) <= ATOL
    for i in range(len(x)):  # each image gets what it gets alone
        alone = backend(x[i:i + 1], threshold=thr)
        assert bool(alone.hard[0]) == bool(out.hard[i])
        assert float((alone.pred[0] - out.pred[i]).abs().max()) <= 1e-4
    with pytest.raises(ValueError):
        ovx.OpenVinoModel(exported["ir_batch"])(x[:, :, :32])


def test_empty_branch_constants_are_rewritten(exported: dict) -> None:
    """The batched graph's 'no image on this route' branches: (0, N, 5 + nc) constants that
    OpenVINO would read as scalars (an If of dynamic rank the CPU plug-in refuses)."""
    proto = onnx.load(str(exported["onnx_batch"]))
    assert ovx.fix_empty_constants(proto) == 2
    assert ovx.fix_empty_constants(proto) == 0
    import openvino as ov
    model = ov.Core().read_model(str(exported["ir_batch"] / "dyb.xml"))
    assert ovx.count_ops(model, "If") == 2  # easy subset / hard subset, each run only when not empty
    assert all(o.get_partial_shape().rank.is_static for o in model.outputs)


def test_a_failed_export_leaves_no_folder(exported: dict, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "x_openvino"
    real_parity = ovx.parity_with_onnx
    seen = []

    def failing_parity(folder, *args, **kwargs):
        seen.append(sorted(p.name for p in Path(folder).iterdir()))  # the files were written ...
        return {"easy": 0.0, "hard": 1.0}  # ... and the check fails

    monkeypatch.setattr(ovx, "parity_with_onnx", failing_parity)
    with pytest.raises(RuntimeError, match="differs from ONNX Runtime"):
        ovx.export_openvino(exported["onnx"], out)
    assert seen == [["dy.bin", "dy.xml", "metadata.json"]]
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no folder, no temporary folder
    monkeypatch.setattr(ovx, "parity_with_onnx", real_parity)
    shutil.copytree(exported["ir"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(folder: Path) -> None:
        raise KeyboardInterrupt

    model, meta = exported["converted"]
    with pytest.raises(KeyboardInterrupt):
        ovx.save_ir(model, out, ovx.ir_metadata(meta, exported["onnx"]), "other", check=interrupted)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_openvino"]
    ovx.save_ir(model, out, ovx.ir_metadata(meta, exported["onnx"]), "other")  # a good one replaces it
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "other.bin", "other.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_openvino"]


def test_files_that_are_not_our_irs(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ovx.OpenVinoModel(tmp_path / "missing.xml")
    import openvino as ov
    import openvino.opset13 as ops
    x = ops.parameter([1, 3], np.float32, name="x")
    ov.save_model(ov.Model([ops.relu(x)], [x]), str(tmp_path / "other.xml"))
    with pytest.raises(ValueError, match="not a DynamicDet OpenVINO export"):
        ovx.OpenVinoModel(tmp_path / "other.xml")
    assert ovx.is_openvino(tmp_path / "other.xml") and ovx.is_openvino(exported["ir"])
    assert not ovx.is_openvino(exported["onnx"])


def _no_bf16_cpu() -> cpu.CpuInfo:
    return cpu.CpuInfo(name="Test CPU without bf16", vendor="GenuineIntel", cores=2,
                       flags=frozenset({"sse2", "avx", "avx2", "fma", "avx512f"}))


def test_bf16_is_refused_without_the_cpu_feature(exported: dict, monkeypatch) -> None:
    monkeypatch.setattr(cpu, "cpu_info", _no_bf16_cpu)
    with pytest.raises(ValueError, match=r"AVX512_BF16 or AMX-BF16.*Test CPU without bf16.*avx512_bf16"):
        ovx.OpenVinoModel(exported["ir"], precision="bf16")
    ovx.OpenVinoModel(exported["ir"], precision="f32")  # fp32 is always fine
    with pytest.raises(ValueError, match="precision must be one of"):
        ovx.OpenVinoModel(exported["ir"], precision="fp8")


@pytest.mark.skipif(not cpu.cpu_info().bf16, reason="needs native bf16 (AVX512_BF16 or AMX-BF16); the refusal "
                                                    "without it is tested above")
def test_bf16_runs_in_bf16_where_supported(exported: dict) -> None:
    fp32 = ovx.OpenVinoModel(exported["ir"])
    bf16 = ovx.OpenVinoModel(exported["ir"], precision="bf16")
    assert fp32.runtime_precisions().keys() == {"f32"} and "bf16" in bf16.runtime_precisions()
    x = ovx.probe_inputs((SIZE, SIZE), 2)
    a, b = fp32(x, threshold=0.0), bf16(x, threshold=0.0)
    assert torch.equal(a.hard, b.hard)
    scores = (a.pred[..., 4:] - b.pred[..., 4:]).abs().max()
    assert 0 < float(scores) < 0.1  # bf16 really ran (not bit-equal), and stays close
