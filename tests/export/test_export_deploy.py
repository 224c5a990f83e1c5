"""export.py --include openvino and --int8: the deployment formats through the export script."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import export
from tests.conftest import make_dataset, tiny_checkpoint
from utils.export.openvino import OpenVinoModel

SIZE = 64


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.long(25)]  # long: the whole file, on 2 cores


def test_openvino_and_int8_exports_through_export_py(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "dy.pt")
    images = make_dataset(tmp_path / "calib", n=6)
    res = export.run(weights=str(ckpt), img_size=SIZE, include=["openvino"], int8=True, data=str(images),
                     int8_images=6, output=str(tmp_path / "out" / "dy"))
    assert Path(res["onnx"]).is_file()  # OpenVINO converts the ONNX export
    fp32, int8 = OpenVinoModel(res["openvino"]), OpenVinoModel(res["openvino_int8"])
    assert fp32.is_dynamic and fp32.names == ["a", "b", "c"] and fp32.int8 is None and int8.int8
    assert set(res["diff"]["openvino"]) == {"easy", "hard"}
    assert all(v is not None and v <= 1e-3 for v in res["diff"]["openvino"].values())
    assert set(res["diff"]["openvino_int8"]) == {"easy", "hard"}
    x = torch.rand(1, 3, SIZE, SIZE)
    for threshold in (0.0, 1.0):  # both routes run
        out = int8(x, threshold=threshold)
        assert out.pred.shape == fp32(x, threshold=threshold).pred.shape and bool(out.hard[0]) == (threshold == 0.0)


def test_int8_needs_calibration_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--int8 needs --data"):
        export.run(weights=str(tmp_path / "w.pt"), include=["openvino"], int8=True)
    assert export.main(["--weights", "w.pt", "--include", "tflite"]) == 1
    with pytest.raises(ValueError, match="--int8-full-range applies to INT8 exports: add --int8"):
        export.run(weights=str(tmp_path / "w.pt"), int8_full_range=True)
