"""DualRes ONNX export: one If between the resolutions, shared weights, per-image routing, parity."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import export
from models.dualres import DualResModel
from models.resolution_router import ResolutionRouter
from models.yolo import build_model
from tests.conftest import randomize_bn
from tests.test_export import fused
from utils.export.exporters import example_images
from utils.runtime.onnx_model import OnnxModel
from utils.export.parity import difference, probe_images
from utils.export.shared_weights import all_graphs, content_key, share_duplicates
from utils.export.spec import ExportOptions
from utils.inference.predictor import Predictor
from utils.routing.calibration import calibration_record
from utils.weights.backends import load_model
from utils.weights.checkpoints import save_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.long(35)]  # long: the whole file, on 2 cores

SIZE = 64
ATOL = 1e-3
NAMES = ["a", "b", "c"]


def lively_dualres(detector: str = "yolov7-tiny") -> DualResModel:
    """Random weights with detections on both routes and φ spread around the median probe image."""
    torch.manual_seed(0)
    inner = 0.0 if detector.startswith("dy-") else None
    model = DualResModel(build_model(detector, names=NAMES), ResolutionRouter("thumb", 32), inner_threshold=inner)
    randomize_bn(model).eval()
    with torch.no_grad():
        for head in model.heads:
            for conv in head.m:
                conv.bias.view(head.na, head.no)[:, 4] = 2.0
        nn.init.normal_(model.router.fc.weight, std=1.0)
        opt = ExportOptions(img_size=(SIZE, SIZE))
        x = torch.cat([probe_images(opt), example_images(opt, 4)])
        logits = model.router.logits(x)
        model.router.fc.weight.mul_(4.0 / float(logits.max() - logits.min()))
        s = model.router.logits(x).sort().values
        model.router.fc.bias.sub_((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)  # no φ right at 0.5
    return model


def dualres_checkpoint(path: Path, detector: str = "yolov7-tiny") -> Path:
    """A lively DualRes model saved as ours, calibrated on the probe images, trained at SIZE."""
    model = lively_dualres(detector)
    with torch.no_grad():
        thresholds = calibration_record(model.difficulty(probe_images(ExportOptions(img_size=(SIZE, SIZE)))))
    return save_checkpoint(path, model, names=NAMES, img_size=SIZE, thresholds=thresholds)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return dualres_checkpoint(tmp_path_factory.mktemp("dualres_export") / "dualres.pt")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> DualResModel:
    return fused(ckpt)


@pytest.fixture(scope="module")
def routed(ckpt: Path) -> dict:
    """The default export: batch 1, resolution chosen in the graph, threshold as an input."""
    return export.run(weights=ckpt)


def _assert_close(diffs: dict, routes: tuple[str, ...]) -> None:
    assert set(diffs) == set(routes), diffs
    assert all(d is not None and d <= ATOL for d in diffs.values()), diffs


def _ops(graph: onnx.GraphProto) -> Counter:
    return Counter(n.op_type for n in graph.node)


def _inputs(graph: onnx.GraphProto) -> set[str]:
    return {v for n in graph.node for v in n.input}


def _copies(path: Path) -> Counter:
    """How often each weight tensor (over 1 kB) is stored in the file, over all its graphs."""
    graphs = all_graphs(onnx.load(path).graph)
    return Counter(content_key(w) for g in graphs for w in g.initializer if len(w.raw_data) > 1024)


def _weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---- the routed graph -----------------------------------------------------------------------------
def test_one_if_between_the_resolutions_reading_shared_weights(routed: dict, model: DualResModel) -> None:
    _assert_close(routed["diff"]["onnx"], ("easy", "hard"))
    proto = onnx.load(routed["onnx"])
    onnx.checker.check_model(proto, full_check=True)
    assert _ops(proto.graph)["If"] == 1
    assert [i.name for i in proto.graph.input] == ["images", "threshold"]
    assert [o.name for o in proto.graph.output] == ["pred", "phi", "hard"]
    branch = next(n for n in proto.graph.node if n.op_type == "If")
    graphs = {a.name: a.g for a in branch.attribute}
    high, low = graphs["then_branch"], graphs["else_branch"]  # hard = full size, easy = downsampled
    extra = _ops(low) - _ops(high)
    assert extra["AveragePool"] == 1 and extra["ScatterND"] == 1  # the 2 x 2 average, the padded rows
    assert not _ops(high) - _ops(low) and _ops(low)["Conv"] == _ops(high)["Conv"] > 0
    shared = {w.name for w in proto.graph.initializer if w.name.startswith("shared/")}
    assert len(shared) >= _ops(high)["Conv"] and shared <= _inputs(low) & _inputs(high)  # one tensor, two readers
    assert max(_copies(routed["onnx"]).values()) == 1  # no weight tensor stored twice
    size = Path(routed["onnx"]).stat().st_size
    assert size < 1.2 * _weight_bytes(model), (size, _weight_bytes(model))


def test_threshold_input_forces_each_route_like_pytorch(routed: dict, model: DualResModel) -> None:
    onnx_model = OnnxModel(routed["onnx"])
    x = probe_images(ExportOptions(img_size=(SIZE, SIZE)))
    for thr, hard in ((1.0, False), (0.0, True)):
        out = onnx_model(x, threshold=thr)
        with torch.no_grad():
            ref = model(x, threshold=thr)
        assert bool(out.hard.all()) == hard and bool(out.hard.any()) == hard
        assert difference(out, ref) <= ATOL and out.pred.shape == ref.pred.shape
    low = onnx_model(x, threshold=1.0).pred
    n_low = model.n_predictions(model.low_size((SIZE, SIZE)))
    assert bool((low[:, n_low:] == 0).all()) and bool((low[:, :n_low, 4] > 0).any())  # padded with zero rows


def test_dynamic_batch_routes_each_image_as_alone(ckpt: Path, model: DualResModel, tmp_path: Path) -> None:
    res = export.run(weights=ckpt, dynamic_batch=True, dy_thres="p50", output=tmp_path / "batched")
    _assert_close(res["diff"]["onnx"], ("easy", "hard", "mixed"))
    proto = onnx.load(res["onnx"])
    assert [i.name for i in proto.graph.input] == ["images"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx_model = OnnxModel(res["onnx"])
    x = probe_images(ExportOptions(img_size=(SIZE, SIZE)))  # the calibration images: half go high
    out = onnx_model(x)
    assert int(out.hard.sum()) == len(x) // 2
    for i in range(len(x)):
        with torch.no_grad():
            alone = model(x[i:i + 1], threshold=res["threshold"])
        assert bool(alone.hard) == bool(out.hard[i])
        assert float((out.pred[i] - alone.pred[0]).abs().max()) <= ATOL
        assert float((onnx_model(x[i:i + 1]).pred[0] - out.pred[i]).abs().max()) <= ATOL


@pytest.mark.parametrize("route,resolution", [("easy", "low"), ("hard", "high")])
def test_static_single_resolution_graph(route: str, resolution: str, ckpt: Path, model: DualResModel,
                                        tmp_path: Path) -> None:
    res = export.run(weights=ckpt, route=route, output=tmp_path / route)
    _assert_close(res["diff"]["onnx"], (route,))
    proto = onnx.load(res["onnx"])
    assert "If" not in _ops(proto.graph) and [o.name for o in proto.graph.output] == ["pred", "phi"]
    onnx_model = OnnxModel(res["onnx"])
    assert not onnx_model.is_dynamic and onnx_model.route == route and onnx_model.kind == "dualres"
    x = example_images(res["options"])
    with torch.no_grad():
        ref = getattr(model, resolution)(x)
    assert float((onnx_model(x) - ref).abs().max()) <= ATOL


def test_metadata_names_the_resolutions(routed: dict, ckpt: Path, model: DualResModel) -> None:
    onnx_model, info = load_model(routed["onnx"])
    assert isinstance(onnx_model, OnnxModel) and onnx_model.is_dynamic
    assert onnx_model.kind == "dualres" and onnx_model.route_names == ("low", "high") == model.route_names
    assert onnx_model.names == NAMES and torch.equal(onnx_model.stride, model.stride)
    assert onnx_model.img_size == (SIZE, SIZE) and onnx_model.threshold == model.threshold
    assert set(onnx_model.gflops) == {"easy", "hard"} and onnx_model.gflops["easy"] < onnx_model.gflops["hard"]
    meta = info["meta"]
    assert meta["dualres"] == {"scale": 0.5, "low_size": [SIZE // 2, SIZE // 2], "inner_threshold": None}
    assert "table" in meta["thresholds"] and meta["export"]["source"] == str(ckpt)


def test_end2end_detections_equal_predictor_nms(ckpt: Path, model: DualResModel, tmp_path: Path) -> None:
    nms = {"conf_thres": 0.1, "iou_thres": 0.45, "topk_all": 300}
    res = export.run(weights=ckpt, batch_size=2, end2end=True, output=tmp_path / "e2e", **nms)
    _assert_close(res["diff"]["onnx"], ("easy", "hard", "mixed"))
    onnx_model = OnnxModel(res["onnx"])
    x = probe_images(ExportOptions(img_size=(SIZE, SIZE)))[:5]  # two full chunks of 2 and a padded one
    got = Predictor(onnx_model)(x, 0.5)
    ref = Predictor(model, conf_thres=nms["conf_thres"], iou_thres=nms["iou_thres"], max_det=300,
                    multi_label=True)(x, 0.5)
    assert torch.equal(got.hard, ref.hard) and 0 < int(ref.hard.sum()) < len(x)
    assert sum(len(d) for d in ref.dets) > 0 and difference(got.dets, ref.dets) <= ATOL


def test_torchscript_routes_per_image(ckpt: Path, model: DualResModel, tmp_path: Path) -> None:
    res = export.run(weights=ckpt, include=["torchscript"], dynamic_batch=True, output=tmp_path / "ts")
    _assert_close(res["diff"]["torchscript"], ("easy", "hard", "mixed"))
    module = torch.jit.load(str(res["torchscript"]))
    x = probe_images(res["options"])
    with torch.no_grad():
        pred, _, hard = module(x, 0.5)
        ref = model(x, threshold=0.5)
    assert torch.equal(hard, ref.hard) and 0 < int(hard.sum()) < len(x)
    assert float((pred - ref.pred).abs().max()) <= 1e-5


def test_dualres_around_a_dy_detector(tmp_path: Path) -> None:
    weights = dualres_checkpoint(tmp_path / "dy-dualres.pt", "dy-yolov7-tiny")
    res = export.run(weights=weights, output=tmp_path / "dy")
    _assert_close(res["diff"]["onnx"], ("easy", "hard"))
    assert _ops(onnx.load(res["onnx"]).graph)["If"] == 1 and max(_copies(res["onnx"]).values()) == 1


def test_simplify_keeps_one_copy_of_the_weights(ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxslim")
    res = export.run(weights=ckpt, dynamic_batch=True, simplify=True, output=tmp_path / "slim")
    _assert_close(res["diff"]["onnx"], ("easy", "hard", "mixed"))
    assert max(_copies(res["onnx"]).values()) == 1  # onnxslim copies outer weights into both branches
    assert OnnxModel(res["onnx"]).route_names == ("low", "high")


def test_share_duplicates_hoists_branch_copies_into_the_main_graph() -> None:
    h = onnx.helper
    w = onnx.numpy_helper.from_array(torch.arange(6.0).view(2, 3).numpy(), "w")

    def branch(tag: str, scale: float) -> onnx.GraphProto:
        weight = onnx.TensorProto()
        weight.CopyFrom(w)
        weight.name = f"{tag}/w"
        s = onnx.numpy_helper.from_array(torch.tensor(scale).numpy(), f"{tag}/s")
        nodes = [h.make_node("Mul", ["x", f"{tag}/w"], [f"{tag}/m"]), h.make_node("Mul", [f"{tag}/m", f"{tag}/s"],
                                                                                   [f"{tag}/y"])]
        return h.make_graph(nodes, tag, [], [h.make_tensor_value_info(f"{tag}/y", onnx.TensorProto.FLOAT, [2, 3])],
                            [weight, s])

    node = h.make_node("If", ["c"], ["y"], then_branch=branch("a", 2.0), else_branch=branch("b", 3.0))
    io = [h.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
          h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])]
    graph = h.make_graph([node], "g", io, [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])])
    model = share_duplicates(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8))
    onnx.checker.check_model(model, full_check=True)
    assert [t.name for t in model.graph.initializer] == ["shared/w"]
    assert [[t.name for t in g.initializer] for g in list(all_graphs(model.graph))[1:]] == [["b/s"], ["a/s"]]
    session = ort.InferenceSession(model.SerializeToString())
    x = torch.ones(2, 3).numpy()
    for c, scale in ((True, 2.0), (False, 3.0)):
        y = session.run(None, {"c": torch.tensor(c).numpy(), "x": x})[0]
        assert (y == torch.arange(6.0).view(2, 3).numpy() * scale).all()
