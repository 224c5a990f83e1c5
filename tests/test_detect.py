"""detect.py end to end on a tiny random model: outputs, labels, routing summary, bad input."""
from __future__ import annotations

import copy
import logging
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
from dydet import DyDet
from tests.conftest import REPO, tiny_checkpoint, write_video
from utils.routing.calibration import calibration_record

REAL_CAPTURE = cv2.VideoCapture
FAST = ["--img-size", "64", "--conf-thres", "0", "--max-det", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    calib = calibration_record(np.linspace(0.05, 0.95, 19), easy_ms=10.0, hard_ms=20.0)
    return tiny_checkpoint(tmp_path_factory.mktemp("w") / "dy.pt", thresholds=calib)


@pytest.fixture(scope="module")
def loaded(weights: Path) -> DyDet:
    return DyDet(weights, device="cpu")


@pytest.fixture
def preloaded(loaded: DyDet, monkeypatch: pytest.MonkeyPatch) -> None:
    """detect.run gets a fresh copy of a model loaded once (loading is tested once, and in test_api)."""
    monkeypatch.setattr(detect, "DyDet", lambda *args, **kwargs: copy.deepcopy(loaded))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Grey, RGBA, 16-bit and 3000x4000 images plus a corrupt file."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "grey.png"), rng.integers(0, 255, (40, 56), dtype=np.uint8))
    cv2.imwrite(str(src / "rgba.png"), rng.integers(0, 255, (48, 32, 4), dtype=np.uint8))
    cv2.imwrite(str(src / "deep.tif"), rng.integers(0, 65535, (36, 60, 3), dtype=np.uint16))
    cv2.imwrite(str(src / "huge.jpg"), np.full((3000, 4000, 3), 100, np.uint8))
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    return src


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.loadtxt(p, ndmin=2) for p in sorted(folder.glob("*.txt"))}


def _run(weights: Path, source: Path | str, tmp_path: Path, **kw) -> dict:
    kw = {"img_size": 64, "conf_thres": 0.0, "max_det": 3, "device": "cpu", "project": tmp_path / "runs", **kw}
    return detect.run(weights=weights, source=source, **kw)


def test_folder_outputs_labels_and_summary(weights: Path, folder: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    project = tmp_path / "runs"
    argv = ["--weights", str(weights), "--source", str(folder), *FAST, "--dy-thres", "0", "--save-txt",
            "--save-conf", "--project", str(project), "--line-thickness", "2"]
    with caplog.at_level(logging.WARNING):
        assert detect.main(argv) == 0
    out = project / "exp"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["deep.tif", "grey.png", "huge.jpg", "rgba.png"]
    assert cv2.imread(str(out / "huge.jpg")).shape == (3000, 4000, 3)
    assert "corrupt.jpg" in caplog.text
    labels = _labels(out / "labels")
    assert sorted(labels) == ["deep", "grey", "huge", "rgba"]
    for rows in labels.values():
        assert rows.shape[1] == 6 and 0 < len(rows) <= 3
        assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()
    printed = capsys.readouterr().out
    assert "4 images and 0 video frames" in printed and "0 easy, 4 hard" in printed
    assert f"Results saved to {out}" in printed


@pytest.mark.usefixtures("preloaded")
def test_all_easy_nosave_and_class_filter(weights: Path, folder: Path, tmp_path: Path) -> None:
    (folder / "huge.jpg").unlink()
    s = _run(weights, folder, tmp_path, dy_thres=1, nosave=True, save_txt=True, classes=[1])
    assert (s["images"], s["easy"], s["hard"], s["threshold"]) == (3, 3, 0, 1.0)
    assert set(s["ms_per_route"]) == {"easy"} and s["ms_per_route"]["easy"] > 0
    out = Path(s["save_dir"])
    assert s["saved"] == [] and not list(out.glob("*.*"))
    for rows in _labels(out / "labels").values():
        assert rows.shape[1] == 5 and set(rows[:, 0].tolist()) == {1.0}


@pytest.mark.usefixtures("preloaded", "fresh_cache")
def test_threshold_for_a_latency_target(weights: Path, folder: Path, tmp_path: Path, monkeypatch) -> None:
    """The routes' latency on this machine (here 30 / 60 ms), not the checkpoint's (10 / 20 ms)."""
    from utils.routing import policy
    monkeypatch.setattr(policy, "route_latency", lambda model, img_size: {"easy": 30.0, "hard": 60.0})
    s = _run(weights, folder / "grey.png", tmp_path, target_latency=45.0, nosave=True)
    assert s["threshold"] == pytest.approx(0.5, abs=0.03)  # halfway between 30 and 60 ms: 50% hard
    s = _run(weights, folder / "grey.png", tmp_path, target_latency=61.0, nosave=True)
    assert s["threshold"] == 0.0 and s["hard"] == 1
    with pytest.raises(ValueError, match="below the easy route"):  # 15 ms fitted the stored 10 / 20
        _run(weights, folder / "grey.png", tmp_path, target_latency=15.0, nosave=True)


@pytest.mark.usefixtures("preloaded")
def test_video_writes_an_annotated_video_and_per_frame_labels(weights: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture, capsys) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    video = write_video(tmp_path / "clip.avi", n_frames=3, fps=12)
    with caplog.at_level(logging.WARNING):
        s = _run(weights, video, tmp_path, save_txt=True, batch_size=2, view_img=True)
    assert "no display" in caplog.text
    assert (s["images"], s["frames"], s["easy"] + s["hard"]) == (0, 3, 3)
    out = Path(s["save_dir"])
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12)
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (48, 32)
    cap.release()
    assert sorted(_labels(out / "labels")) == ["clip_0", "clip_1", "clip_2"]
    assert "3/3" in capsys.readouterr().err  # the progress bar knows the video's length


@pytest.mark.usefixtures("preloaded")
def test_stream_url(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "rtsp://127.0.0.1:8554/live"
    video = write_video(tmp_path / "feed.avi", n_frames=2)
    monkeypatch.setattr(cv2, "VideoCapture", lambda target, *a: REAL_CAPTURE(str(video) if target == url else target, *a))
    s = _run(weights, url, tmp_path)
    assert s["frames"] == 2 and [Path(p).name for p in s["saved"]] == ["127.0.0.1_8554_live.mp4"]


@pytest.mark.parametrize("source, message", [("missing/dir", "error: source not found: missing/dir"),
                                             ("99", "error: cannot open webcam 99")])
def test_bad_source_is_one_error_line(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      source: str, message: str) -> None:
    argv = ["--weights", str(weights), "--source", source, "--project", str(tmp_path / "runs"), "--device", "cpu"]
    assert detect.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message)
    assert not (tmp_path / "runs").exists()


def test_command_line_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """``python detect.py ...`` as a script (run in this process: a new interpreter costs ~10 s)."""
    monkeypatch.setattr(sys, "argv", ["detect.py", "--weights", "w.pt", "--source", str(tmp_path / "nope.jpg")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "detect.py"), run_name="__main__")
    assert e.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: source not found: {tmp_path / 'nope.jpg'}"]
