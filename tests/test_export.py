"""export.py: the routed ONNX graph, static routes, batches, end-to-end NMS, TorchScript, parity."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import export
from models.yolo import build_model
from tests.conftest import randomize_bn
from utils.export.exporters import (
    example_images,
    onnx_graph,
    onnx_metadata,
    save_onnx,
)
from utils.export.onnx_graph import Builder, finish, nms, tensor_info
from utils.runtime.onnx_model import OnnxModel
from utils.export.parity import difference, parity, probe_images
from utils.export.spec import ExportOptions
from utils.inference.nms import non_max_suppression
from utils.inference.predictor import Predictor
from utils.routing.calibration import calibration_record, table_threshold
from utils.weights.backends import load_model
from utils.weights.checkpoints import read_checkpoint, save_checkpoint

SIZE = 64
ATOL = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def lively(model: torch.nn.Module, size: int = SIZE) -> torch.nn.Module:
    """Random weights that exercise an export: BN statistics, objectness high enough for
    detections, and a router whose φ spreads around 0.5 over the probe and example images."""
    randomize_bn(model).eval()
    with torch.no_grad():
        for head in model.heads:
            for conv in head.m:
                conv.bias.view(head.na, head.no)[:, 4] = 2.0
        if model.is_dynamic:
            opt = ExportOptions(img_size=(size, size))
            x = torch.cat([probe_images(opt), example_images(opt, 4)])
            feats, _ = model.backbone1(x)
            pooled = model.router_inputs(feats)
            logits = model.router.logits(pooled)
            model.router.layer2.weight.mul_(4.0 / float(logits.max() - logits.min()))
            s = model.router.logits(pooled).sort().values
            model.router.layer2.bias.sub_((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)  # no φ right at 0.5
    return model


def checkpoint(path: Path, cfg: str = "dy-yolov7-tiny") -> Path:
    """A lively model saved as ours; a dynamic one is calibrated on the probe images."""
    torch.manual_seed(0)
    model = lively(build_model(cfg, names=["a", "b", "c"]))
    thresholds = None
    if model.is_dynamic:
        with torch.no_grad():
            thresholds = calibration_record(model.difficulty(probe_images(ExportOptions(img_size=(SIZE, SIZE)))))
    return save_checkpoint(path, model, names=model.names, thresholds=thresholds)


def fused(weights: Path) -> torch.nn.Module:
    return load_model(weights, device="cpu")[0].fuse().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint(tmp_path_factory.mktemp("export") / "dy.pt")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> torch.nn.Module:
    return fused(ckpt)


@pytest.fixture(scope="module")
def routed(ckpt: Path) -> dict:
    """The default export: batch 1, route in the graph, threshold as an input."""
    return export.run(weights=ckpt, img_size=SIZE)


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def _assert_close(diffs: dict, routes: tuple[str, ...]) -> None:
    assert set(diffs) == set(routes), diffs
    assert all(d is not None and d <= ATOL for d in diffs.values()), diffs


# ---- the routed graph -----------------------------------------------------------------------------
def test_routed_graph_is_one_conditional_with_parity(routed: dict) -> None:
    _assert_close(routed["diff"]["onnx"], ("easy", "hard"))
    proto = onnx.load(routed["onnx"])
    onnx.checker.check_model(proto, full_check=True)
    assert _ops(proto.graph).count("If") == 1
    assert [i.name for i in proto.graph.input] == ["images", "threshold"]
    assert [o.name for o in proto.graph.output] == ["pred", "phi", "hard"]
    branch = next(n for n in proto.graph.node if n.op_type == "If")
    then, orelse = (a.g for a in branch.attribute)
    assert then.initializer and orelse.initializer  # each detector's weights live in its branch
    assert not any("det2/" in w.name or "head1/" in w.name for w in proto.graph.initializer)


def test_threshold_input_flips_the_route(routed: dict, model: torch.nn.Module) -> None:
    onnx_model = OnnxModel(routed["onnx"])
    x = probe_images(ExportOptions(img_size=(SIZE, SIZE)))
    with torch.no_grad():
        phi = model.difficulty(x)
    assert onnx_model(x, threshold=0.0).hard.all() and not onnx_model(x, threshold=1.0).hard.any()
    s = phi.sort().values
    thr = float(s[3] + s[4]) / 2
    out = onnx_model(x, threshold=thr)  # a static batch of 1 runs the 8 images one by one
    assert 0 < int(out.hard.sum()) < len(x) and torch.equal(out.hard, phi > thr)
    with torch.no_grad():
        ref = model(x, threshold=thr)
    assert float((out.pred - ref.pred).abs().max()) <= ATOL and float((out.phi - ref.phi).abs().max()) <= ATOL


def test_baked_threshold_with_dynamic_batch_routes_each_image(ckpt: Path, model: torch.nn.Module,
                                                              tmp_path: Path) -> None:
    res = export.run(weights=ckpt, img_size=SIZE, dynamic_batch=True, dy_thres="p50", output=tmp_path / "baked")
    _assert_close(res["diff"]["onnx"], ("easy", "hard", "mixed"))  # found among the probe images
    thr = res["threshold"]
    assert thr == table_threshold(read_checkpoint(ckpt)["thresholds"]["table"], 50)
    proto = onnx.load(res["onnx"])
    assert [i.name for i in proto.graph.input] == ["images"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx_model = OnnxModel(res["onnx"])
    x = probe_images(ExportOptions(img_size=(SIZE, SIZE)))  # the calibration images: half are hard
    out = onnx_model(x)
    assert int(out.hard.sum()) == len(x) // 2
    for i in range(len(x)):  # a mixed batch gives each image what it gets alone
        with torch.no_grad():
            alone = model(x[i:i + 1], threshold=thr)
        assert bool(alone.hard) == bool(out.hard[i])
        assert float((out.pred[i] - alone.pred[0]).abs().max()) <= ATOL
    with pytest.raises(ValueError, match="built in"):
        onnx_model(x, threshold=thr / 2)


# ---- other graphs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["easy", "hard"])
def test_static_single_route_graph(route: str, ckpt: Path, tmp_path: Path) -> None:
    res = export.run(weights=ckpt, img_size=SIZE, route=route, output=tmp_path / route)
    _assert_close(res["diff"]["onnx"], (route,))
    proto = onnx.load(res["onnx"])
    assert "If" not in _ops(proto.graph) and [o.name for o in proto.graph.output] == ["pred", "phi"]
    onnx_model = OnnxModel(res["onnx"])
    assert not onnx_model.is_dynamic and onnx_model.route == route


def test_end2end_detections_equal_predictor_nms(ckpt: Path, model: torch.nn.Module, tmp_path: Path) -> None:
    nms = {"conf_thres": 0.1, "iou_thres": 0.45, "topk_all": 300}
    res = export.run(weights=ckpt, img_size=SIZE, batch_size=2, end2end=True, output=tmp_path / "e2e", **nms)
    _assert_close(res["diff"]["onnx"], ("easy", "hard", "mixed"))
    onnx_model = OnnxModel(res["onnx"])
    assert onnx_model.end2end and onnx_model.nms == nms and onnx_model.batch == 2
    assert "NonMaxSuppression" in _ops(onnx.load(res["onnx"]).graph)
    x = torch.cat([probe_images(ExportOptions(img_size=(SIZE, SIZE)))[:2], example_images(res["options"], 1)])
    got = Predictor(onnx_model)(x)  # 3 images: a full chunk of 2 and a padded one
    ref = Predictor(model, conf_thres=nms["conf_thres"], iou_thres=nms["iou_thres"], max_det=300, multi_label=True)(x)
    assert torch.equal(got.hard, ref.hard) and sum(len(d) for d in ref.dets) > 0
    assert difference(got.dets, ref.dets) <= ATOL  # the same boxes (in any order of equal scores)


def test_nms_graph_keeps_topk_per_image_like_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.cat([torch.rand(3, 40, 2, generator=g) * 64, torch.rand(3, 40, 2, generator=g) * 24 + 4,
                      torch.rand(3, 40, 3, generator=g)], 2)  # cx, cy, w, h, obj, 2 classes
    b = Builder()
    dets = nms(b, "pred", 2, 0.2, 0.5, 5)
    model = finish(b, [tensor_info("pred", onnx.TensorProto.FLOAT, [3, 40, 7])],
                   {"dets": (dets, onnx.TensorProto.FLOAT, [None, 7])}, 17, {})
    onnx.checker.check_model(model, full_check=True)
    out = torch.from_numpy(ort.InferenceSession(model.SerializeToString()).run(None, {"pred": pred.numpy()})[0])
    ref = non_max_suppression(pred, 0.2, 0.5, multi_label=True, max_det=5)
    assert torch.equal(out[:, 0], torch.tensor([0.0] * 5 + [1.0] * 5 + [2.0] * 5))  # 5 per image, in order
    for i, r in enumerate(ref):
        got = out[out[:, 0] == i, 1:]
        assert torch.equal(got[:, 4], got[:, 4].sort(descending=True).values)
        torch.testing.assert_close(got, r, atol=1e-4, rtol=0)


def test_plain_model_export(tmp_path: Path) -> None:
    res = export.run(weights=checkpoint(tmp_path / "plain.pt", "yolov7-tiny"), img_size=SIZE)
    _assert_close(res["diff"]["onnx"], ("all",))
    onnx_model = OnnxModel(res["onnx"])
    x = example_images(res["options"])
    assert not onnx_model.is_dynamic and isinstance(onnx_model(x), torch.Tensor)


def test_exported_files_get_the_users_file_permissions(ckpt: Path, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        res = export.run(weights=ckpt, img_size=SIZE, include=["onnx", "torchscript"], output=tmp_path / "perm")
    finally:
        os.umask(old)
    for fmt in ("onnx", "torchscript"):
        assert stat.S_IMODE(Path(res[fmt]).stat().st_mode) == 0o640, fmt  # not mkstemp's 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["perm.onnx", "perm.torchscript"]


def test_torchscript_routes_like_pytorch(ckpt: Path, model: torch.nn.Module, tmp_path: Path) -> None:
    res = export.run(weights=ckpt, img_size=SIZE, include=["torchscript"], dynamic_batch=True, output=tmp_path / "ts")
    assert "onnx" not in res
    _assert_close(res["diff"]["torchscript"], ("easy", "hard", "mixed"))
    extra = {"dydet.json": ""}
    module = torch.jit.load(str(res["torchscript"]), _extra_files=extra)
    meta = json.loads(extra["dydet.json"])
    assert meta["names"] == ["a", "b", "c"] and meta["dynamic"] and meta["threshold"] == 0.5
    x = probe_images(res["options"])[:4]
    with torch.no_grad():
        pred, _, hard = module(x, 0.5)
        ref = model(x, threshold=0.5)
    assert torch.equal(hard, ref.hard) and float((pred - ref.pred).abs().max()) <= 1e-5


@pytest.mark.slow
@pytest.mark.long(30)
@pytest.mark.parametrize("cfg,size", [("dy-yolov7", 64), ("dy-yolov7-w6", 64)])  # dy-yolov7x: dy-yolov7, wider
def test_large_dynamic_configs(cfg: str, size: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = lively(build_model(cfg, nc=1), size).fuse()
    opt = ExportOptions(img_size=(size, size))
    path = save_onnx(onnx_graph(model, opt, onnx_metadata(model, opt, {"path": cfg})), tmp_path / "m.onnx")
    diffs = parity(OnnxModel(path), model, opt, threshold_free=True)
    _assert_close(diffs, ("easy", "hard"))


# ---- files and errors -----------------------------------------------------------------------------
def test_simplify_keeps_parity_and_metadata(ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxslim")
    import warnings
    with warnings.catch_warnings():  # onnxslim may break the routed graph: then it is kept unsimplified
        warnings.simplefilter("ignore")
        res = export.run(weights=ckpt, img_size=SIZE, simplify=True, output=tmp_path / "slim")
    _assert_close(res["diff"]["onnx"], ("easy", "hard"))
    assert OnnxModel(res["onnx"]).names == ["a", "b", "c"]
    onnx.checker.check_model(onnx.load(str(res["onnx"])), full_check=True)


def test_simplify_falls_back_on_an_invalid_result(monkeypatch) -> None:
    pytest.importorskip("onnxslim")
    import onnxslim

    from utils.export import exporters
    good = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])]))
    broken = onnx.ModelProto()
    broken.CopyFrom(good)
    broken.graph.node[0].input[0] = "missing"
    monkeypatch.setattr(onnxslim, "slim", lambda proto: broken)
    with pytest.warns(UserWarning, match="unsimplified"):
        assert exporters.simplify(good) is good


@pytest.mark.parametrize("args,message", [
    (["--weights", "missing.pt"], "missing.pt"),
    (["--route", "fast"], "invalid choice"),
    (["--include", "tflite"], "--include"),
    (["--include", "torchscript", "--end2end"], "apply to ONNX"),
    (["--img-size", "60", "64"], "multiples of the stride"),  # one number is rounded up, as elsewhere
    (["--opset", "9"], "--opset"),
    (["--route", "easy", "--dy-thres", "0.3"], "--route both"),
])
def test_cli_errors_are_one_line(args: list[str], message: str, ckpt: Path, tmp_path: Path, capsys) -> None:
    argv = ["--weights", str(ckpt), "--output", str(tmp_path / "x"), *args]
    try:
        code = export.main(argv)
    except SystemExit as e:  # argparse rejects unknown choices itself
        code = e.code
    err = capsys.readouterr().err
    assert code not in (0, None) and message in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("x*"))


def test_plain_model_rejects_routing_options(tmp_path: Path) -> None:
    weights = checkpoint(tmp_path / "plain.pt", "yolov7-tiny")
    with pytest.raises(ValueError, match="dynamic model"):
        export.run(weights=weights, img_size=SIZE, route="easy")
    with pytest.raises(ValueError, match="dynamic model"):
        export.run(weights=weights, img_size=SIZE, thres_input=True)
