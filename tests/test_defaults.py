"""One table of defaults (utils/defaults.py) reaches the command line, every run(...) and the API;
the main job works with no flags (the shipped demo model at its training size)."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import detect
import export
import test as test_script
import train
import train_router
from dydet import DyDet
from utils.defaults import DEMO_WEIGHTS, IMG_SIZE, PREDICT, PROJECT, VAL
from utils.evaluation.evaluate import evaluate
from utils.inference.nms import non_max_suppression
from utils.inference.predictor import Predictor
from utils.weights.backends import input_size

NMS_KEYS = ("conf_thres", "iou_thres", "max_det")


def _signature_defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_predict_defaults_reach_cli_api_and_nms() -> None:
    cli = detect.parse_args([])
    for key in NMS_KEYS:
        want = getattr(PREDICT, key)
        assert getattr(cli, key) == want, key
        assert _signature_defaults(DyDet.stream)[key] == want, key
        assert _signature_defaults(Predictor.__init__)[key] == want, key
        assert _signature_defaults(non_max_suppression)[key] == want, key
    assert cli.weights == DEMO_WEIGHTS and cli.source is None and cli.img_size is None
    assert cli.project == PROJECT["detect"]


def test_val_defaults_reach_test_and_the_evaluation_core() -> None:
    cli = test_script.parse_args(["--weights", "w.pt", "--data", "d.yaml"])
    for key in NMS_KEYS:
        assert getattr(cli, key) == getattr(VAL, key) == _signature_defaults(evaluate)[key], key
    assert cli.img_size is None and cli.project == PROJECT["test"]


def test_every_script_run_takes_keywords_checked_against_its_options(tmp_path: Path) -> None:
    for script in (detect, test_script, train, train_router, export):
        params = inspect.signature(script.run).parameters
        assert list(params) == ["options", "kwargs"], script.__name__
        with pytest.raises(ValueError, match="unknown options.*no_such_flag"):
            script.run(no_such_flag=1)


def test_same_names_on_cli_and_api() -> None:
    api = set(inspect.signature(DyDet.stream).parameters)
    cli = set(vars(detect.parse_args([])))
    shared = {"img_size", "conf_thres", "iou_thres", "dy_thres", "batch_size", "classes", "agnostic_nms", "max_det"}
    assert shared <= api and shared <= cli


def test_input_size_prefers_the_call_then_the_weights_then_the_default() -> None:
    assert input_size(320, {"img_size": 128}) == 320
    assert input_size(None, {"img_size": 128}) == 128
    assert input_size(None, {"img_size": [96, 160]}) == 160  # an export's (h, w)
    assert input_size(None, {}) == IMG_SIZE


def test_demo_model_is_the_default_and_keeps_its_training_size() -> None:
    model = DyDet()
    assert Path(model.info["path"]).name == DEMO_WEIGHTS and model.img_size == 128
    assert model.names == ["circle", "square", "triangle", "cross"]


def test_bare_detect_runs_the_demo_on_the_sample_images(tmp_path: Path) -> None:
    summary = detect.run(project=str(tmp_path), device="cpu")
    assert summary["images"] == 6 and summary["img_size"] == 128
    assert summary["easy"] + summary["hard"] == 6
    assert len(summary["saved"]) == 6 and all(Path(p).is_file() for p in summary["saved"])
