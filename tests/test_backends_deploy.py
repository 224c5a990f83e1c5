"""OpenVINO IRs and --half through the scripts: detect.py, test.py and the API run them like a .pt."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("openvino")

import detect  # noqa: E402
import export  # noqa: E402
import test as test_script  # noqa: E402
from data.make_demo_data import make_demo_dataset  # noqa: E402
from dydet import DyDet  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from utils import cpu  # noqa: E402
from utils.runtime.openvino_model import OpenVinoModel  # noqa: E402
from utils.weights.backends import load_model  # noqa: E402

pytestmark = pytest.mark.long(25)  # the whole file, on 2 cores: scheduled among the first

WEIGHTS = REPO / "weights" / "demo-dy-yolov7-tiny.pt"
SIZE = 128


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict:
    """The demo model's ONNX and OpenVINO exports and 24 fresh demo images."""
    root = tmp_path_factory.mktemp("deploy")
    out = export.run(weights=WEIGHTS, img_size=[SIZE], include=["onnx", "openvino"], dynamic_batch=True,
                     thres_input=True, output=str(root / "demo"))
    data = make_demo_dataset(root / "data", n_train=0, n_val=24, img_size=SIZE, seed=3)
    return {"onnx": Path(out["onnx"]), "ir": Path(out["openvino"]), "data": data, "root": root}


def _no_bf16_cpu() -> cpu.CpuInfo:
    return cpu.CpuInfo(name="Test CPU without bf16", vendor="AuthenticAMD", cores=2,
                       flags=frozenset({"sse2", "avx", "avx2", "fma"}))


def test_load_model_runs_an_ir_folder_or_its_xml(deployed: dict) -> None:
    for path in (deployed["ir"], next(deployed["ir"].glob("*.xml"))):
        model, info = load_model(path)
        assert isinstance(model, OpenVinoModel) and info["format"] == "openvino"
        assert model.is_dynamic and model.route_names == ("easy", "hard") and info["thresholds"]


def test_test_py_scores_the_ir_like_the_pt(deployed: dict) -> None:
    """Exports take square letterboxed inputs, the .pt rectangular ones: the IR must equal the
    ONNX export (same inputs) in routing and score, and the .pt within 0.01 mAP."""
    common = dict(data=deployed["data"], img_size=SIZE, batch_size=8, workers=0, plots=False,
                  project=deployed["root"], exist_ok=True)
    pt = test_script.run(weights=WEIGHTS, name="pt", **common)
    onnx = test_script.run(weights=str(deployed["onnx"]), name="onnx", **common)
    ir = test_script.run(weights=str(deployed["ir"]), name="ir", **common)
    assert pt["map"] > 0.05  # a real score to compare
    assert abs(ir["map"] - pt["map"]) < 0.01 and abs(ir["map50"] - pt["map50"]) < 0.01
    assert ir["dynamic"]["hard"] == onnx["dynamic"]["hard"] and abs(ir["map"] - onnx["map"]) < 1e-3


def test_detect_py_and_the_api_run_the_ir(deployed: dict) -> None:
    source = deployed["data"].parent / "images" / "val"
    summary = detect.run(weights=str(deployed["ir"]), source=str(source), project=deployed["root"], name="det",
                         nosave=True)
    assert summary["images"] == 24
    ref, got = DyDet(deployed["onnx"]).predict(str(source)), DyDet(deployed["ir"]).predict(str(source))
    assert [r.route for r in got] == [r.route for r in ref]
    for a, b in zip(ref, got):
        assert len(a.boxes) == len(b.boxes)
        if len(a.boxes):
            assert float((torch.as_tensor(a.boxes) - torch.as_tensor(b.boxes)).abs().max()) < 0.05  # pixels


def test_half_is_refused_where_the_cpu_has_no_bf16(deployed: dict, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cpu, "cpu_info", _no_bf16_cpu)
    for weights in (str(WEIGHTS), str(deployed["ir"])):
        assert detect.main(["--weights", weights, "--half", "--nosave", "--project", str(deployed["root"])]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "AVX512_BF16" in err[0], err
    with pytest.raises(ValueError, match="AVX512_BF16"):
        DyDet(WEIGHTS, half=True)
    with pytest.raises(ValueError, match="ONNX Runtime runs .* in fp32 only"):
        load_model(deployed["onnx"], half=True)


@pytest.mark.skipif(not cpu.cpu_info().bf16, reason="bf16 needs AVX512_BF16/AMX (refusal tested above)")
def test_half_runs_bf16_close_to_fp32(deployed: dict) -> None:
    common = dict(data=deployed["data"], img_size=SIZE, batch_size=8, workers=0, plots=False,
                  project=deployed["root"], exist_ok=True)
    fp32 = test_script.run(weights=WEIGHTS, name="fp32", **common)
    for weights in (WEIGHTS, deployed["ir"]):
        bf16 = test_script.run(weights=str(weights), name="bf16", half=True, **common)
        assert abs(bf16["map"] - fp32["map"]) < 0.03, (weights, bf16["map"], fp32["map"])
    model = DyDet(deployed["ir"], half=True).model
    assert "bf16" in model.runtime_precisions()
