"""A DualRes checkpoint goes wherever a Dy checkpoint goes: detect.py, test.py (with --dy-sweep),
the DyDet API and the dial (pK from its calibration); routes are called low and high."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import detect
import test as test_script
from dydet import DyDet
from models.dualres import DualResModel
from models.resolution_router import ResolutionRouter
from models.yolo import build_model
from tests.conftest import make_dataset
from utils.routing.calibration import calibration_record
from utils.weights.checkpoints import save_checkpoint

NAMES = ["a", "b", "c"]
IMG = 128


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dualres")
    torch.manual_seed(0)
    model = DualResModel(build_model("yolov7-tiny", names=NAMES), ResolutionRouter("thumb", input_size=64), 0.5)
    with torch.no_grad():
        for head in model.heads:  # objectness high enough for detections on random weights
            for conv in head.m:
                conv.bias.view(head.na, head.no)[:, 4] = 2.0
        model.router.fc.weight.normal_(0, 5.0)  # φ spread over (0, 1)
    images = make_dataset(root / "data", n=6, nc=3)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"train": str(images), "val": str(images), "nc": 3, "names": NAMES}))
    plain = save_checkpoint(root / "uncalibrated.pt", model, names=NAMES, img_size=IMG)
    phi = [r.phi for r in DyDet(plain, device="cpu").predict(sorted(images.glob("*.jpg")))]  # as the API sees them
    weights = save_checkpoint(root / "dualres.pt", model, names=NAMES, img_size=IMG,
                              thresholds=calibration_record(np.array(phi)))
    return {"weights": weights, "data": data, "images": images, "root": root}


def test_api_routes_low_and_high_at_the_checkpoints_size(setup: dict) -> None:
    dy = DyDet(setup["weights"], device="cpu")
    assert dy.is_dynamic and dy.route_names == ("low", "high") and dy.img_size == IMG
    imgs = sorted(setup["images"].glob("*.jpg"))
    assert {r.route for r in dy.predict(imgs, dy_thres=1)} == {"low"}
    assert {r.route for r in dy.predict(imgs, dy_thres=0)} == {"high"}
    for r in dy.predict(imgs, dy_thres=0.5, conf_thres=0.01):
        assert r.caption == f"{r.route} φ={r.phi:.2f}" and (r.route == "high") == (r.phi > 0.5)
    for r in dy.predict(imgs, dy_thres=1, conf_thres=0.01):  # boxes in the original image's pixels
        h, w = r.orig_img.shape[:2]
        assert len(r) and (r.boxes[:, [0, 2]] <= w + 1e-3).all() and (r.boxes[:, [1, 3]] <= h + 1e-3).all()
    share = np.mean([r.route == "high" for r in dy.predict(imgs, dy_thres="p50")])
    assert 0 < share < 1


def test_detect_summary_counts_low_and_high(setup: dict, tmp_path: Path) -> None:
    s = detect.run(weights=str(setup["weights"]), source=str(setup["images"]), dy_thres=0, device="cpu",
                   project=str(tmp_path))
    assert s["route_names"] == ["low", "high"] and s["high"] == 6 and s["low"] == 0 and s["img_size"] == IMG


def test_test_py_sweeps_a_dualres_model(setup: dict, tmp_path: Path, capsys) -> None:
    out = test_script.run(weights=str(setup["weights"]), data=str(setup["data"]), device="cpu", workers=0,
                          batch_size=3, dy_sweep=True, plots=False, save_dir=str(tmp_path))
    dyn = out["dynamic"]
    assert dyn["route_names"] == ["low", "high"] and dyn["easy"] + dyn["hard"] == 6
    auc = dyn["sweep"]["auc_policy_router"]
    assert (auc is None or 0 <= auc <= 1) and "detector1" in dyn
    gflops = [p["gflops"] for p in dyn["sweep"]["points"]["router"]]
    assert gflops[0] < gflops[-1]  # 0% high costs the low route, 100% the high one
    assert "low, " in capsys.readouterr().out
