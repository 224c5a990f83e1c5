"""The shipped demo model on images it has never seen: its router must route better than chance."""
from __future__ import annotations


import pytest

import test as test_script
from data.make_demo_data import make_demo_dataset
from tests.conftest import REPO
from utils.weights.checkpoints import read_checkpoint

pytestmark = pytest.mark.long(40)  # the whole file, on 2 cores: scheduled among the first

WEIGHTS = REPO / "weights" / "demo-dy-yolov7-tiny.pt"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """The accuracy-speed sweep on 120 fresh images (seed 2: neither training, validation nor the held-out images of the docs)."""
    root = tmp_path_factory.mktemp("fresh")
    data = make_demo_dataset(root / "data", n_train=0, n_val=120, img_size=128, seed=2)
    return test_script.run(weights=WEIGHTS, data=data, img_size=128, batch_size=16, workers=0, plots=False,
                           dy_sweep=True, project=root, name="sweep")


def test_the_release_file_is_a_calibrated_fp16_dynamic_checkpoint() -> None:
    ckpt = read_checkpoint(WEIGHTS)
    assert ckpt["cfg"]["name"] == "dy-yolov7-tiny" and ckpt["names"] == ["circle", "square", "triangle", "cross"]
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {__import__("torch").float16}
    calib = ckpt["thresholds"]
    assert len(calib["table"]) == 101 and calib["img_size"] == 128
    assert calib["gflops"]["easy"] < calib["gflops"]["hard"]
    assert not any(k in ckpt for k in ("optimizer", "train_model"))  # a release copy, no training state


def test_detector2_is_the_better_route_and_the_router_beats_random(sweep: dict) -> None:
    dyn = sweep["dynamic"]
    assert dyn["detector2"]["map"] > dyn["detector1"]["map"] * 1.2  # the hard route pays for itself
    auc = dyn["sweep"]
    assert auc["auc_policy_router"] > auc["auc_policy_random"] + 0.03, auc
    router = auc["points"]["router"]
    assert [round(p["hard_fraction"], 2) for p in router] == [k / 10 for k in range(11)]
    assert router[0]["map"] == pytest.approx(dyn["detector1"]["map"])
    assert router[-1]["map"] == pytest.approx(dyn["detector2"]["map"])
