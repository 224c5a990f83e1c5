"""Bad numeric options of detect.py and test.py: a clear one-line error or a warning, never a traceback."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import detect
import test as test_script
from data.make_demo_data import make_demo_dataset
from tests.conftest import REPO
from utils.defaults import DEMO_WEIGHTS
from utils.validate import check_img_size

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = REPO / "data" / "images" / "demo_val_00000.jpg"
# (extra arguments, words the error line must contain)
ERRORS = [
    (["--img-size", "-64"], "--img-size -64 must be a positive"),
    (["--img-size", "0"], "--img-size 0 must be a positive"),
    (["--conf-thres", "1.5"], "--conf-thres 1.5 is outside [0, 1]"),
    (["--conf-thres", "-0.1"], "--conf-thres -0.1 is outside [0, 1]"),
    (["--iou-thres", "2"], "--iou-thres 2.0 is outside [0, 1]"),
    (["--iou-thres", "nan"], "--iou-thres nan is outside [0, 1]"),
    (["--dy-thres", "abc"], "routing threshold 'abc' not understood"),
    (["--dy-thres", "p150"], "hard percentage must be within [0, 100]"),
    (["--dy-thres", "1.5e"], "not understood"),
    (["--device", "0"], "CUDA is not available"),
]


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_train=2, n_val=2, img_size=128, seed=0)


def _argv(script: str, data: Path, out: Path) -> list[str]:
    if script == "detect":
        return ["--weights", str(DEMO_WEIGHTS), "--source", str(IMAGE), "--project", str(out), "--nosave"]
    return ["--weights", str(DEMO_WEIGHTS), "--data", str(data), "--project", str(out), "--no-plots",
            "--workers", "0"]


MAINS: dict[str, Callable[[list[str]], int]] = {"detect": detect.main, "test": test_script.main}


@pytest.mark.parametrize("extra, message", ERRORS, ids=[" ".join(e) for e, _ in ERRORS])
@pytest.mark.parametrize("script", sorted(MAINS))
def test_bad_option_is_one_error_line(script: str, extra: list[str], message: str, data_yaml: Path,
                                      tmp_path: Path, capsys) -> None:
    if extra[0] != "--device":
        extra = [*extra, "--device", "cpu"]
    capsys.readouterr()
    assert MAINS[script]([*_argv(script, data_yaml, tmp_path / "runs"), *extra]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert message in errors[0], errors[0]


@pytest.mark.parametrize("script", sorted(MAINS))
def test_non_stride_img_size_is_rounded_up_with_a_warning(script: str, data_yaml: Path, tmp_path: Path,
                                                          caplog) -> None:
    caplog.set_level("WARNING")
    argv = [*_argv(script, data_yaml, tmp_path / "runs"), "--img-size", "100", "--device", "cpu"]
    assert MAINS[script](argv) == 0
    assert "--img-size 100 is not a multiple of the stride 32; using 128" in caplog.text
    if script == "test":
        metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
        assert metrics.get("img_size", 128) == 128


@pytest.mark.parametrize("size, stride, out", [(None, 32, None), (128, 32, 128), (1, 32, 32), (100, 32, 128),
                                               (641, 64, 704)])
def test_check_img_size(size: int | None, stride: int, out: int | None) -> None:
    assert check_img_size(size, stride) == out


@pytest.mark.parametrize("size", [0, -1, -640])
def test_check_img_size_refuses_non_positive(size: int) -> None:
    with pytest.raises(ValueError, match="must be a positive number of pixels"):
        check_img_size(size, 32)
