"""utils/routing/score_scale.py: a routed mix scoring below both routes alone is said so."""
from __future__ import annotations

import numpy as np
import pytest

from utils.routing.score_scale import below_both, mixing_warning, sweep_warning


def test_below_both_needs_a_clear_gap() -> None:
    assert not below_both(0.19, [0.16, 0.24])  # between the routes: normal
    assert not below_both(0.155, [0.16, 0.24])  # a hair below: noise
    assert below_both(0.036, [0.153, 0.161])  # what different score scales did on a user's data
    assert below_both(0.002, [0.01, 0.02]) is False  # tiny maps: the 0.01 floor


def test_one_line_naming_the_point_and_the_routes() -> None:
    message = mixing_warning(0.036, {"easy": 0.161, "hard": 0.153}, "90% hard")
    assert message.startswith("routed mAP@.5:.95 0.036 (90% hard) is below both routes alone (easy 0.161 and hard 0.153)")
    assert "\n" not in message and mixing_warning(0.157, {"easy": 0.161, "hard": 0.153}, "x") is None


@pytest.mark.parametrize("maps, warns", [([0.16, 0.17, 0.19, 0.21, 0.24], False),
                                         ([0.153, 0.04, 0.036, 0.035, 0.161], True)])
def test_sweep_warning_looks_at_the_interior_points(maps, warns) -> None:
    points = [{"map": m, "hard_fraction": i / (len(maps) - 1)} for i, m in enumerate(maps)]
    message = sweep_warning(points)
    assert (message is not None) == warns
    if warns:
        assert "(75% hard)" in message


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory) -> dict:
    """The demo model with detector 2's objectness logits lowered by 4: its scores on another scale
    (about 50x smaller) while it ranks its own detections as before; and 60 held-out images."""
    import torch

    from data.make_demo_data import make_demo_dataset
    from tests.conftest import REPO
    from utils.weights.checkpoints import load_checkpoint, save_checkpoint
    root = tmp_path_factory.mktemp("score-scale")
    model, info = load_checkpoint(REPO / "weights" / "demo-dy-yolov7-tiny.pt")
    head = model.model_h2[-1]
    with torch.no_grad():
        for conv in head.m:
            conv.bias.view(head.na, -1)[:, 4] -= 4.0
    weights = save_checkpoint(root / "shrunk.pt", model, names=info["names"], img_size=info["img_size"],
                              thresholds=info["thresholds"])
    data = make_demo_dataset(root / "data", n_train=0, n_val=60, img_size=128, seed=5)
    return {"weights": weights, "data": data, "root": root}


def test_test_py_warns_when_the_routes_scores_disagree(shrunk: dict, caplog) -> None:
    import logging

    import test as test_script
    with caplog.at_level(logging.WARNING):
        out = test_script.run(weights=str(shrunk["weights"]), data=str(shrunk["data"]), dy_sweep=True, workers=0,
                              plots=False, project=str(shrunk["root"]), name="sweep")
    router = out["dynamic"]["sweep"]["points"]["router"]
    assert min(p["map"] for p in router[1:-1]) < min(router[0]["map"], router[-1]["map"]) - 0.02
    lines = [r.getMessage() for r in caplog.records if "below both routes alone" in r.getMessage()]
    assert len(lines) == 1 and "confidence scores are on different scales" in lines[0]


@pytest.mark.long(40)
def test_score_calibration_repairs_the_mix_in_pytorch_and_in_an_export(shrunk: dict, caplog) -> None:
    """train_router.py --calibrate fits a map per route on the 60 validation images; on 60 other
    images the sweep then lies between the routes again and the router beats random."""
    import logging

    import export
    import test as test_script
    import train_router
    from data.make_demo_data import make_demo_dataset
    root = shrunk["root"]
    cal = train_router.run(weights=str(shrunk["weights"]), data=str(shrunk["data"]), calibrate=True, workers=0,
                           device="cpu", project=str(root), name="cal")
    assert set(cal["thresholds"]["score_calibration"]) == {"easy", "hard"}
    held_out = make_demo_dataset(root / "held-out", n_train=0, n_val=60, img_size=128, seed=6)
    kw = dict(weights=str(cal["calibrated"]), data=str(held_out), dy_sweep=True, workers=0, plots=False,
              project=str(root))
    with caplog.at_level(logging.WARNING):
        fixed = test_script.run(name="calibrated", **kw)["dynamic"]["sweep"]
        raw = test_script.run(name="raw", raw_scores=True, **kw)["dynamic"]["sweep"]
    assert fixed["auc_policy_router"] > fixed["auc_policy_random"] and fixed["auc_policy_router"] > 0.3
    assert raw["auc_policy_router"] < 0 < fixed["auc_policy_router"]
    warned = [r for r in caplog.records if "below both routes alone" in r.getMessage()]
    assert len(warned) == 1  # the raw run only
    # an export carries the maps in its metadata and its runtime applies them
    from dydet import DyDet
    onnx_path = export.run(weights=str(cal["calibrated"]), output=str(root / "dy"))["onnx"]
    pt, ort = DyDet(cal["calibrated"], device="cpu"), DyDet(onnx_path)
    assert ort.score_calibration == pt.score_calibration is not None
    import cv2  # square images: letterboxed alike for PyTorch (any shape) and the export (a fixed 128x128)
    images = [p for p in sorted((held_out.parent / "images" / "val").glob("*.jpg"))
              if cv2.imread(str(p)).shape[0] == cv2.imread(str(p)).shape[1]][:4]
    assert images
    for a, b in zip(pt.predict(images, dy_thres=0.0, conf_thres=0.05), ort.predict(images, dy_thres=0.0, conf_thres=0.05)):
        assert len(a) == len(b) and np.allclose(a.scores, b.scores, atol=2e-3)
    raw = DyDet(onnx_path, raw_scores=True).predict(images, dy_thres=0.0, conf_thres=0.05)
    assert sum(map(len, raw)) < sum(len(r) for r in ort.predict(images, dy_thres=0.0, conf_thres=0.05))
