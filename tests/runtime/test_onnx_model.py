"""OnnxModel: metadata round trip, the PyTorch calling convention, Predictor and test.py on .onnx."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import yaml

import export
import test as test_script
from tests.conftest import make_dataset
from tests.test_export import SIZE, checkpoint, fused
from utils.data.config import load_data_config
from utils.data.datasets import create_dataloader
from utils.evaluation.evaluate import evaluate
from utils.runtime.onnx_model import OnnxModel
from utils.export.parity import difference, probe_images
from utils.export.spec import ExportOptions
from utils.inference.predictor import Predictor
from utils.weights.backends import load_model
from utils.weights.checkpoints import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A calibrated dynamic checkpoint and its dynamic-batch export (threshold as an input)."""
    root = tmp_path_factory.mktemp("onnx_model")
    ckpt = checkpoint(root / "dy.pt")
    res = export.run(weights=ckpt, img_size=SIZE, dynamic_batch=True)
    return {"pt": ckpt, "onnx": res["onnx"], "root": root, "model": fused(ckpt)}


def test_metadata_round_trip(exported: dict) -> None:
    model, info = load_model(exported["onnx"])
    assert isinstance(model, OnnxModel) and info["format"] == "onnx" and info["path"] == str(exported["onnx"])
    ref = exported["model"]
    assert model.names == info["names"] == ["a", "b", "c"]
    assert torch.equal(model.stride, ref.stride) and model.img_size == (SIZE, SIZE) and model.batch is None
    assert model.is_dynamic and model.threshold == ref.threshold and model.threshold_input
    assert not model.end2end and model.fused and set(model.gflops) == {"easy", "hard"}
    assert model.kind == "dy" and model.route_names == ("easy", "hard") == ref.route_names
    stored = read_checkpoint(exported["pt"])["thresholds"]
    assert json.loads(json.dumps(stored)) == info["thresholds"]  # the calibration table travels along
    assert info["meta"]["export"]["dynamic_batch"] and info["meta"]["export"]["source"] == str(exported["pt"])
    props = {p.key for p in onnx.load(exported["onnx"], load_external_data=False).metadata_props}
    assert {"names", "stride", "img_size", "threshold", "thresholds", "export"} <= props


def test_calls_like_the_pytorch_model(exported: dict) -> None:
    model, ref_model = OnnxModel(exported["onnx"]), exported["model"]
    x = probe_images(ExportOptions(img_size=(SIZE, SIZE)))
    model.threshold = 0.0  # settable like the PyTorch model's
    assert model(x).hard.all()
    out = model(x, threshold=0.5)
    with torch.no_grad():
        ref = ref_model(x, threshold=0.5)
    assert difference(out, ref) <= 1e-3 and out.pred.shape == ref.pred.shape


def test_predictor_runs_onnx_like_pytorch(exported: dict) -> None:
    x = (probe_images(ExportOptions(img_size=(SIZE, SIZE))) * 255).to(torch.uint8)
    got = Predictor(OnnxModel(exported["onnx"]), conf_thres=0.1)(x, 0.5)
    ref = Predictor(exported["model"], conf_thres=0.1)(x, 0.5)
    assert torch.equal(got.hard, ref.hard) and sum(len(d) for d in ref.dets) > 0
    assert difference(got.dets, ref.dets) <= 1e-3


def test_wrong_input_size_names_both_sizes(exported: dict) -> None:
    with pytest.raises(ValueError, match=r"exported for 64x64 inputs but got 96x64"):
        OnnxModel(exported["onnx"])(torch.zeros(1, 3, 96, 64))


def test_files_that_are_not_our_exports(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_model(tmp_path / "missing.onnx")
    other = tmp_path / "other.onnx"
    h = onnx.helper
    info = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "identity", info[:1], info[1:])
    onnx.save(h.make_model(graph, ir_version=8, opset_imports=[h.make_opsetid("", 17)]), str(other))
    with pytest.raises(ValueError, match="not a DynamicDet export"):
        OnnxModel(other)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        OnnxModel(garbage)


@pytest.fixture(scope="module")
def data(exported: dict) -> Path:
    root = exported["root"] / "data"
    images = make_dataset(root, n=8, nc=3)
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"train": str(images), "val": str(images), "nc": 3, "names": ["a", "b", "c"]}))
    return path


def test_test_py_scores_onnx_like_the_pt(exported: dict, data: Path, tmp_path: Path, capsys) -> None:
    args = ["--data", str(data), "--img-size", str(SIZE), "--batch-size", "4", "--workers", "0", "--no-plots",
            "--conf-thres", "0.1", "--save-json", "--project", str(tmp_path), "--exist-ok"]
    assert test_script.main(["--weights", str(exported["onnx"]), "--name", "onnx", *args]) == 0
    assert "Routing:" in capsys.readouterr().out
    onnx_metrics = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    # the .pt scored on the same square letterboxed batches the fixed-size export needs
    loader, _ = create_dataloader(load_data_config(data).val, SIZE, 4, 32, rect=False, pad=0.5, workers=0, nc=3)
    model, info = load_model(exported["pt"], device="cpu")
    pt = evaluate(model.optimize_for_inference(), loader, info["names"], conf_thres=0.1, threshold=model.threshold,
                  img_size=SIZE)
    pt_metrics = pt.to_dict()
    for key in ("map50", "map", "precision", "recall"):
        assert onnx_metrics[key] == pytest.approx(pt_metrics[key], abs=1e-6), key
    d_onnx, d_pt = onnx_metrics["dynamic"], pt_metrics["dynamic"]
    assert (d_onnx["easy"], d_onnx["hard"]) == (d_pt["easy"], d_pt["hard"]) and "detector1" not in d_onnx
    onnx_preds = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert len(onnx_preds) == sum(len(d) for _, d in pt.predictions) > 0


def test_test_py_needs_the_export_size(exported: dict, data: Path, tmp_path: Path, capsys) -> None:
    code = test_script.main(["--weights", str(exported["onnx"]), "--data", str(data), "--img-size", "96",
                             "--workers", "0", "--project", str(tmp_path)])
    assert code == 1 and "--img-size 64" in capsys.readouterr().err
