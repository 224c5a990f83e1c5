"""Reading image files as ``HxWx3`` ``uint8`` BGR arrays, whatever their depth or channels.

What :func:`read_image` does with the awkward files (each case is a test in
``tests/reliability/test_images.py``):

* EXIF orientation is applied (JPEG, PNG, WebP, TIFF; OpenCV's decoder does it), giving what
  PIL's ``ImageOps.exif_transpose`` gives, as YOLOv5/Ultralytics load images: a phone photo
  stored sideways comes back upright, so its size and its labels are the upright picture's.
* CMYK JPEGs, palette PNGs (with or without transparency), grey, grey+alpha, RGBA, 16-bit and
  float images become 8-bit BGR.
* A multi-page TIFF or an animated GIF gives its FIRST page or frame (one image, one label
  file). ``detect.py`` reads a ``.gif`` given as a source as a video instead: every frame.
* Sides from 1 pixel up are read as they are (OpenCV refuses more than 2**30 pixels in all).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from utils.data.config import PathLike
from utils.io import atomic_write_bytes

__all__ = ["ImageReadError", "to_bgr_uint8", "read_image", "write_image"]


class ImageReadError(OSError):
    """An image file is missing, empty or cannot be decoded."""


def to_bgr_uint8(img: np.ndarray) -> np.ndarray:
    """Convert a decoded image (grey, BGRA, 16-bit or float) to ``HxWx3`` ``uint8`` BGR."""
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif np.issubdtype(img.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(img, initial=0.0)) <= 1.0 else 1.0
        img = np.nan_to_num(img * scale).clip(0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = img.clip(0, 255).astype(np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def read_image(path: PathLike) -> np.ndarray:
    """Read an image as ``HxWx3`` ``uint8`` BGR, upright (EXIF orientation applied); the first
    page of a multi-page TIFF, the first frame of a GIF (see the module docstring).

    Raises :class:`ImageReadError` if the file is missing, empty or undecodable.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e}") from e
    if data.size == 0:
        raise ImageReadError(f"empty image file (0 bytes): {path}")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise ImageReadError(f"cannot decode image: {path}")
    return to_bgr_uint8(img)


def write_image(path: PathLike, img_bgr: np.ndarray) -> Path:
    """Encode a BGR image by the suffix of ``path`` (PNG without one) and write it atomically.

    Works for non-ASCII paths (OpenCV's imwrite does not on every platform); returns the path.
    """
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", img_bgr)
    if not ok:
        raise OSError(f"could not encode an image as {path.suffix or '.png'!r} for {path}")
    return atomic_write_bytes(path, buf.tobytes())
