"""A model carries its settings: every entry point runs a model at the size it was trained at
when no size is given, and says in one line when a given size differs."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

import detect
import export
import test as test_script
import train
import train_router
from data.make_demo_data import make_demo_dataset
from dydet import DyDet
from tests.conftest import REPO
from utils.weights.checkpoints import read_checkpoint

pytestmark = pytest.mark.long(30)  # the whole file, on 2 cores: scheduled among the first

SIZE = 96  # not the default 640, nor the demo's 128


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A dy-yolov7-tiny trained for one epoch at 96 px (its checkpoint records the size)."""
    root = tmp_path_factory.mktemp("settings")
    data = make_demo_dataset(root / "data", n_train=4, n_val=4, img_size=SIZE, seed=0)
    hyp = yaml.safe_load((REPO / "data" / "hyp.scratch.tiny.yaml").read_text(encoding="utf-8"))
    (root / "hyp.yaml").write_text(yaml.safe_dump({**hyp, "mosaic": 0.0}), encoding="utf-8")
    out = train.run(cfg="dy-yolov7-tiny", data=str(data), hyp=str(root / "hyp.yaml"), img_size=SIZE, epochs=1,
                    batch_size=4, workers=0, device="cpu", project=str(root / "runs"), name="t", noval=True,
                    plots=False)
    assert read_checkpoint(out["last"])["img_size"] == SIZE
    return {"weights": out["last"], "data": data, "root": root}


def test_detect_test_export_and_the_api_use_the_trained_size(trained: dict, tmp_path: Path) -> None:
    weights, data = str(trained["weights"]), str(trained["data"])
    images = trained["data"].parent / "images" / "val"
    assert DyDet(weights, device="cpu").img_size == SIZE
    assert detect.run(weights=weights, source=str(images), device="cpu", nosave=True,
                      project=str(tmp_path), name="d")["img_size"] == SIZE
    assert test_script.run(weights=weights, data=data, device="cpu", workers=0, plots=False,
                           project=str(tmp_path), name="t")["img_size"] == SIZE
    onnx_path = export.run(weights=weights, output=str(tmp_path / "dy"))["onnx"]
    assert export.run(weights=weights, output=str(tmp_path / "dy2"))["options"].img_size == (SIZE, SIZE)
    # the export carries the size on: test.py runs it without --img-size
    assert test_script.run(weights=str(onnx_path), data=data, workers=0, plots=False, project=str(tmp_path),
                           name="onnx")["img_size"] == SIZE


def test_router_training_and_calibration_use_the_trained_size(trained: dict, tmp_path: Path) -> None:
    weights, data = str(trained["weights"]), str(trained["data"])
    common = dict(weights=weights, data=data, device="cpu", workers=0, project=str(tmp_path))
    out = train_router.run(epochs=1, batch_size=4, lr=1e-3, name="r", **common)
    ckpt = read_checkpoint(out["last"])
    assert ckpt["img_size"] == SIZE and ckpt["thresholds"]["img_size"] == SIZE
    assert ckpt["train_opt"]["img_size"] == SIZE
    cal = train_router.run(calibrate=True, name="c", **common)
    assert read_checkpoint(cal["calibrated"])["img_size"] == SIZE and cal["thresholds"]["img_size"] == SIZE
    scores = [test_script.run(weights=str(w), data=data, dy_thres=0.0, workers=0, plots=False, project=str(tmp_path),
                              name=f"eval{i}")["map"] for i, w in enumerate((weights, cal["calibrated"]))]
    assert scores[1] == scores[0]  # the calibrated file evaluates exactly as the file it came from
    dualres = train_router.run(router="dualres", epochs=1, batch_size=4, lr=1e-2, name="dr", **common)
    assert read_checkpoint(dualres["last"])["img_size"] == SIZE


def test_a_size_that_differs_from_the_trained_one_is_said_in_one_line(trained: dict, tmp_path: Path,
                                                                       caplog) -> None:
    weights = str(trained["weights"])
    images = trained["data"].parent / "images" / "val"
    with caplog.at_level(logging.WARNING):
        s = detect.run(weights=weights, source=str(images), device="cpu", img_size=128, nosave=True,
                       project=str(tmp_path), name="d")
    assert s["img_size"] == 128
    lines = [r.getMessage() for r in caplog.records if "differs from the 96 px" in r.getMessage()]
    assert lines == ["warning: --img-size 128 differs from the 96 px the weights were trained at"]
    out = export.run(weights=weights, img_size=100, output=str(tmp_path / "dy100"))  # rounded up, as elsewhere
    assert out["options"].img_size == (128, 128)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train.run(weights=weights, data=str(trained["data"]), img_size=64, epochs=1, batch_size=4, workers=0,
                  device="cpu", project=str(tmp_path), name="ft", noval=True, plots=False)
    assert any("training at --img-size 64;" in r.getMessage() and "96 px" in r.getMessage()
               for r in caplog.records)
