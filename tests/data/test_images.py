"""Tests for utils/data/images.py: reading images of any depth and channel count, read errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.images import ImageReadError, read_image


def test_read_image_converts_formats(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (10, 1))
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7  # blue channel (BGR order), alpha
    g16 = np.full((10, 12), 65535, np.uint16)
    c16 = np.zeros((10, 12, 3), np.uint16)
    c16[..., 2] = 257 * 100  # red
    for name, arr in {"g.png": gray, "rgba.png": rgba, "g16.png": g16, "c16.png": c16}.items():
        cv2.imwrite(str(tmp_path / name), arr)
    for name in ("g.png", "rgba.png", "g16.png", "c16.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (10, 12, 3) and img.dtype == np.uint8, name
    assert (read_image(tmp_path / "g.png")[..., 1] == gray).all()
    assert read_image(tmp_path / "rgba.png")[0, 0].tolist() == [200, 0, 0]
    assert (read_image(tmp_path / "g16.png") == 255).all()
    assert read_image(tmp_path / "c16.png")[0, 0].tolist() == [0, 0, 100]


def test_read_image_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg" * 5)
    for name in ("empty.jpg", "bad.jpg", "missing.jpg"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
