"""utils/routing/drift.py: a video whose frames do not route like the calibration images is said so, once."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

import detect
from tests.conftest import tiny_checkpoint
from utils.routing.calibration import calibration_record, requested_percent
from utils.routing.drift import HardShareWatch


def test_requested_percent() -> None:
    assert requested_percent("p30") == 30.0 and requested_percent(" P7.5 ") == 7.5
    assert requested_percent("0.3") is None and requested_percent(0.3) is None and requested_percent(None) is None


def test_warns_once_when_the_share_is_clearly_off() -> None:
    watch = HardShareWatch(30)
    messages = [watch.add(True) for _ in range(29)]
    assert messages == [None] * 29  # too few frames to judge
    first = watch.add(True)
    assert first and first.startswith("p30 asked for 30% hard frames, but 100% of the first 30 went hard")
    assert "\n" not in first and watch.add(True) is None  # once


def test_a_share_near_the_request_or_a_short_run_does_not_warn() -> None:
    near = HardShareWatch(30)
    assert not any(near.add(i % 10 < 4) for i in range(300))  # 40%: within 15 points
    small = HardShareWatch(50, min_frames=30)
    assert not any(small.add(i % 3 == 0) for i in range(31))  # 35% of 31 frames: within 3 standard errors


def test_detect_warns_when_video_frames_route_unlike_the_calibration(tmp_path: Path, caplog) -> None:
    # every calibration image had φ near 0.99, so p30's threshold sits near 0.99 and these frames stay easy
    calib = calibration_record(np.linspace(0.985, 0.995, 19))
    weights = tiny_checkpoint(tmp_path / "dy.pt", thresholds=calib)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 32))
    for i in range(32):
        writer.write(np.full((32, 48, 3), 60 + 4 * i, np.uint8))
    writer.release()
    with caplog.at_level(logging.WARNING):
        s = detect.run(weights=str(weights), source=str(video), img_size=64, dy_thres="p30", device="cpu",
                       nosave=True, project=str(tmp_path / "runs"))
    assert s["frames"] == 32 and s["hard"] == 0
    lines = [r.getMessage() for r in caplog.records if "asked for 30% hard frames" in r.getMessage()]
    assert len(lines) == 1 and "recalibrate" in lines[0]
