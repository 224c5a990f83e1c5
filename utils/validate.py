"""Shared checks for user input: what a broken file holds, and the numeric options of the scripts."""
from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path

LOGGER = logging.getLogger("dydet")

MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"),
)


def describe_file(path: str | Path, binary: str = "unrecognised binary data") -> str:
    """A few words on what ``path`` holds, for an error about a file that failed to load."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty file, 0 bytes"
    head = path.read_bytes()[:512] if size < 1 << 16 else path.open("rb").read(512)
    if head.startswith(b"PK\x03\x04"):
        return "corrupt zip archive" if zipfile.is_zipfile(path) else "truncated or corrupt zip archive"
    if head.startswith(b"\x80") and b"\x8a\x0a" in head[:4]:
        return "legacy non-zip torch.save file; only zip-format files (torch >= 1.6) are read safely"
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head.lstrip().startswith(b"<"):
        return "malformed or truncated XML"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return binary
    return "a text file"


def check_fraction(value: float | None, flag: str) -> None:
    """Raise unless ``value`` is None or a number in [0, 1]."""
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{flag} {value} is outside [0, 1]")


def check_img_size(size: int | None, stride: int) -> int | None:
    """``size`` rounded up to a multiple of ``stride`` (with a warning); None stays None, <= 0 is an error."""
    if size is None:
        return None
    if size <= 0:
        raise ValueError(f"--img-size {size} must be a positive number of pixels")
    rounded = math.ceil(size / stride) * stride
    if rounded != size:
        LOGGER.warning("warning: --img-size %d is not a multiple of the stride %d; using %d", size, stride, rounded)
    return rounded
