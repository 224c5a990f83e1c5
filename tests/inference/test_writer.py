"""utils/inference/writer.py: what detect.py saves and shows for each result."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.inference.results import Result
from utils.inference.writer import ResultWriter


def test_view_img_window_failures_and_quit_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    result = Result("a.jpg", np.zeros((8, 8, 3), np.uint8), [], [], [], ["a"])

    def no_window(*args) -> None:
        raise cv2.error("The function is not implemented")
    monkeypatch.setattr(cv2, "imshow", no_window)
    sink = ResultWriter(tmp_path, save_img=False, view_img=True)
    with caplog.at_level(logging.WARNING):
        sink.write(result)
        sink.write(result)
    assert not sink.view_img and caplog.text.count("cannot open a window") == 1
    monkeypatch.setattr(cv2, "imshow", lambda *args: None)
    monkeypatch.setattr(cv2, "waitKey", lambda delay: ord("q"))
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    sink = ResultWriter(tmp_path, save_img=False, view_img=True)
    sink.write(result)
    assert sink.quit
    sink.close()
