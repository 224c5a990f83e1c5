"""INT8: NNCF quantizes both If bodies of the routed OpenVINO IR, keeps the router and the box
decode float and preserves the φ ranking; ONNX Runtime quantizes single-route exports only."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import export  # noqa: E402
from tests.export.test_openvino import SIZE, tiny_checkpoint  # noqa: E402
from utils.export import openvino as ovx  # noqa: E402
from utils.export import quantize as q  # noqa: E402
from utils.runtime.onnx_model import OnnxModel  # noqa: E402


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.long(35)]  # long: the whole file, on 2 cores


def calibration(n: int = 12, seed: int = 1) -> torch.Tensor:
    """Images of varied brightness and texture (φ spreads over them)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 1.0, n).view(-1, 1, 1, 1)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * scale


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def quantized_inputs(model) -> dict[str, list[str]]:
    """For every graph, the types of ops a FakeQuantize feeds (what NNCF made run in INT8)."""
    out = {}
    for name, body in [("main", model), *ovx.if_bodies(model)]:
        fed = []
        for op in body.get_ordered_ops():
            if op.get_type_name() == "FakeQuantize":
                fed += [t.get_node().get_type_name() for t in op.output(0).get_target_inputs()]
        out[name] = sorted(fed)
    return out


def onnx_quant_counts(path: str | Path) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear / Conv counts of an ONNX file (top level)."""
    proto = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in proto.graph.node]
    return {k: ops.count(k) for k in ("QuantizeLinear", "DequantizeLinear", "Conv")}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("quantize")
    ckpt = tiny_checkpoint(root / "dy.pt")
    onnx_path = Path(export.run(weights=str(ckpt), img_size=SIZE, output=str(root / "dy"))["onnx"])
    ir = ovx.export_openvino(onnx_path, check=False)
    int8 = q.quantize_openvino(ir, calibration())
    return {"root": root, "pt": ckpt, "onnx": onnx_path, "ir": ir, "int8": int8}


def test_both_if_bodies_are_quantized(quantized: dict) -> None:
    import openvino as ov
    assert quantized["int8"] == quantized["root"] / "dy_int8_openvino"
    model = ov.Core().read_model(str(quantized["int8"] / "dy.xml"))
    report = q.quantization_report(model)
    assert ovx.count_ops(model, "If") == 1 and len(report) == 3  # main graph + then + else
    for name, counts in report.items():
        router_convs = 2 if name == "main" else 0  # the router's two FC layers (1x1 convs) stay float
        assert counts["FakeQuantize"] > 0, name
        assert counts["int8_weights"] == counts["Convolution"] - router_convs > 0, (name, counts)
    meta = ovx.OpenVinoModel(quantized["int8"]).meta
    assert meta["openvino"]["int8"]["report"] == report and meta["openvino"]["int8"]["calibration_images"] == 12


def test_router_route_and_decode_stay_float(quantized: dict) -> None:
    import openvino as ov
    model = ov.Core().read_model(str(quantized["int8"] / "dy.xml"))
    fed = Counter(t for types in quantized_inputs(model).values() for t in types)
    assert fed["Convolution"] > 0
    for op in ("Greater", "LessEqual", "Less", "Power", "Sigmoid", "Multiply", "ReduceMean"):
        assert fed[op] == 0, op  # no FakeQuantize in front of φ, the route decision or the decode
    fp32 = ov.Core().read_model(str(quantized["ir"] / "dy.xml"))
    scope = q.float_scope(fp32)
    assert "phi" in scope["router"] and any("router/layer2" in n for n in scope["router"])
    assert any("Sigmoid" in n for n in scope["decode"]) and not any("Convolution" in n for n in scope["decode"])


def test_int8_keeps_routes_and_phi_ranking(quantized: dict) -> None:
    fp32, int8 = ovx.OpenVinoModel(quantized["ir"]), ovx.OpenVinoModel(quantized["int8"])
    assert int8.int8 and int8.precision == "f32"
    assert "u8" in int8.runtime_precisions() or "i8" in int8.runtime_precisions()  # runs INT8 kernels
    x = calibration(16, seed=7)
    a, b = fp32(x, threshold=1.0), int8(x, threshold=1.0)
    assert float(a.phi.max() - a.phi.min()) > 0.2  # the check means something
    assert spearman(a.phi, b.phi) >= 0.9
    for t in (1.0, 0.0):
        out = int8(x, threshold=t)
        assert bool(out.hard.all()) == (t == 0.0) and bool(out.hard.any()) == (t == 0.0)
        ref = fp32(x, threshold=t)
        score = (out.pred[..., 4:] - ref.pred[..., 4:]).abs().max()
        assert 0 < float(score) < 0.25  # INT8 really ran, the scores stay near fp32


def test_quantizing_twice_is_refused(quantized: dict) -> None:
    with pytest.raises(ValueError, match="already INT8"):
        q.quantize_openvino(quantized["int8"], calibration(2))


def test_onnx_runtime_refuses_the_routed_graph(quantized: dict) -> None:
    with pytest.raises(ValueError, match=r"keeps the route in an If.*--route easy / --route hard"):
        q.quantize_onnx(quantized["onnx"], calibration(2))


def test_onnx_runtime_quantizes_a_single_route_export(quantized: dict) -> None:
    root = quantized["root"]
    easy = Path(export.run(weights=str(quantized["pt"]), img_size=SIZE, route="easy", output=str(root / "dy-easy"))["onnx"])
    proto = onnx.load(str(easy), load_external_data=False)
    excluded = q.onnx_float_nodes(proto)
    assert any("router" in n for n in excluded) and any("Sigmoid" in n for n in excluded)
    path = q.quantize_onnx(easy, calibration())
    assert path == root / "dy-easy-int8.onnx"
    counts = onnx_quant_counts(path)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    got, ref = OnnxModel(path), OnnxModel(easy)
    assert got.route == "easy" and got.names == ref.names
    x = calibration(4, seed=3)
    score = (got(x)[..., 4:] - ref(x)[..., 4:]).abs().max()
    assert 0 < float(score) < 0.25
    meta = {p.key for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert {"quantization", "names", "img_size", "route"} <= meta


def test_calibration_feeds_take_both_routes() -> None:
    x = calibration(3)
    feeds = q.calibration_feeds(x, threshold_input=True)
    assert len(feeds) == 6 and [float(f["threshold"]) for f in feeds[:2]] == [1.0, 0.0]
    assert all(f["images"].shape == (1, 3, SIZE, SIZE) and f["images"].dtype == np.float32 for f in feeds)
    assert len(q.calibration_feeds(x, threshold_input=False)) == 3


def _int8_weights_ov(path: Path) -> np.ndarray:
    import openvino as ov
    model = ov.Core().read_model(str(ovx.find_xml(path)))
    values = [op.get_data().ravel() for _, body in [("main", model), *ovx.if_bodies(model)]
              for op in body.get_ordered_ops()
              if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"]
    return np.concatenate(values)


def _int8_weights_onnx(path: Path) -> np.ndarray:
    proto = onnx.load(str(path))
    return np.concatenate([onnx.numpy_helper.to_array(t).ravel() for t in proto.graph.initializer
                           if t.data_type == onnx.TensorProto.INT8])


def test_weights_are_7_bit_by_default_so_no_cpu_saturates(quantized: dict) -> None:
    """|w| <= 64 keeps u8 x s8 pair sums (255 x 64 x 2) inside int16: exact without VNNI."""
    w = _int8_weights_ov(quantized["int8"])
    assert w.min() >= -64 and w.max() <= 64 and np.abs(w).max() >= 60  # the 7-bit range is used
    meta = ovx.OpenVinoModel(quantized["int8"]).int8
    assert meta["saturation_safe"] and meta["weight_bits"] == 7 and meta["overflow_fix"] == "enable"


def test_onnx_runtime_weights_7_bit_unless_asked(quantized: dict) -> None:
    root = quantized["root"]
    easy = Path(export.run(weights=str(quantized["pt"]), img_size=SIZE, route="easy", output=str(root / "sat"))["onnx"])
    safe = q.quantize_onnx(easy, calibration(4), root / "safe.onnx")
    full = q.quantize_onnx(easy, calibration(4), root / "full.onnx", saturation_safe=False)
    assert np.abs(_int8_weights_onnx(safe)).max() == 64 and np.abs(_int8_weights_onnx(full)).max() == 127
    assert OnnxModel(safe).int8["weights"].startswith("s7") and OnnxModel(safe).int8["saturation_safe"]
    record = OnnxModel(full).int8
    assert record["weights"].startswith("s8") and not record["saturation_safe"] and record["weight_bits"] == 8
