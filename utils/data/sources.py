"""Inference inputs: image and video files, webcams, network streams and in-memory arrays.

:func:`open_source` turns a ``--source`` value into a :class:`FileSource` (an image, a video, a
directory, a glob or a ``.txt`` list of files) or a :class:`CaptureSource` (a webcam index, a
stream URL, or a ``.streams`` / ``.txt`` file of URLs); :class:`ArraySource` wraps numpy arrays
and PIL images for the Python API. Every source yields :class:`Frame` objects holding the
original image as ``HxWx3`` ``uint8`` BGR, whatever its depth or channels;
:class:`utils.inference.transform.LetterboxTransform` letterboxes them into model-ready batches.

Errors: a missing source raises ``FileNotFoundError``; one that exists but cannot be used (a
corrupt single file, a camera or stream that does not open, an empty folder) raises
:class:`SourceError`. Inside a folder, glob or list, bad files are skipped with a warning each.
"""
from __future__ import annotations

import glob
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.data.config import IMG_SUFFIXES, PathLike, find_images
from utils.data.images import read_image, to_bgr_uint8

LOGGER = logging.getLogger(__name__)

VID_SUFFIXES = frozenset({".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg",
                          ".ts", ".webm", ".wmv"})
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 10_000  # a stream silent this long fails its read (then is reconnected)
MAX_BAD_FRAMES = 10  # undecodable video frames in a row that end a video file
STREAM_RETRIES = 3  # reconnection attempts when a stream or webcam stops delivering frames
RETRY_DELAY_S = 1.0  # wait before each reconnection attempt
GLOB_CHARS = re.compile(r"[*?\[]")

__all__ = [
    "VID_SUFFIXES", "ArraySource", "CaptureSource", "FileSource", "Frame", "SourceError",
    "as_source", "open_source", "read_stream_list",
]


class SourceError(OSError):
    """A source exists but cannot be read (corrupt file, camera or stream that does not open)."""


@dataclass
class Frame:
    """One input image: ``img`` is the original ``HxWx3`` ``uint8`` BGR array.

    ``path`` is the file, URL, ``webcam<N>`` or ``image<N>`` (arrays); ``index`` is the frame
    number in a video or stream (None for still images); ``fps`` is the source's frame rate.
    """

    img: np.ndarray
    path: str
    index: int | None = None
    fps: float | None = None


# --------------------------------------------------------------------------- files
def _is_url(text: str) -> bool:
    return text.lower().startswith(URL_SCHEMES)


def _open_capture(target: int | str, what: str) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture`` or :class:`SourceError` naming ``what``."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
    cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {what}")
    return cap


def _fps(cap: cv2.VideoCapture) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else 30.0


def _frame_count(cap: cv2.VideoCapture) -> int:
    """Frames the container announces, 0 if unknown (live streams, some formats)."""
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(n) if math.isfinite(n) and n > 0 else 0


def video_frames(path: PathLike) -> Iterator[Frame]:
    """Every decodable frame of a video file, in order; ``Frame.index`` is the frame number.

    A frame that cannot be decoded in the middle of the file is skipped with a warning naming
    the file and the frame, and reading goes on; :data:`MAX_BAD_FRAMES` failures in a row end
    the video (with a warning if the container announced more frames). The announced frame
    count is only used for that warning: it is an estimate in some containers.
    """
    cap = _open_capture(str(path), f"video {path}")
    fps, total, index, bad = _fps(cap), _frame_count(cap), 0, 0
    try:
        while bad < MAX_BAD_FRAMES:
            ok, img = cap.read()
            if not ok:
                bad, index = bad + 1, index + 1
                continue
            if bad:
                LOGGER.warning("video %s: skipped frame(s) %d-%d that could not be decoded",
                               path, index - bad, index - 1)
            bad = 0
            yield Frame(to_bgr_uint8(img), str(path), index, fps)
            index += 1
        if total and index - bad < total:
            LOGGER.warning("video %s: stopped at frame %d of %d (%d reads in a row failed)",
                           path, index - bad, total, bad)
    finally:
        cap.release()


def _file_frames(path: Path) -> Iterator[Frame]:
    suffix = path.suffix.lower()
    if suffix in VID_SUFFIXES:
        yield from video_frames(path)
    elif suffix in IMG_SUFFIXES:
        yield Frame(read_image(path), str(path))
    else:
        raise SourceError(f"not an image or video file: {path}")


class FileSource:
    """Image and video files read in order.

    ``strict`` (a single file given as the source): a file that cannot be read raises.
    Otherwise (a folder, glob or list) it is skipped with a warning naming it.
    """

    live = False

    def __init__(self, paths: Iterable[PathLike], strict: bool = False) -> None:
        self.paths = [Path(p) for p in paths]
        self.strict = strict
        if strict and len(self.paths) == 1 and self.paths[0].suffix.lower() in VID_SUFFIXES:
            _open_capture(str(self.paths[0]), f"video {self.paths[0]}").release()

    def __len__(self) -> int:
        return len(self.paths)

    def expected_frames(self) -> int | None:
        """Images plus the frames each video announces (for a progress bar); None if a video
        does not say. An estimate: undecodable files and frames are skipped when read."""
        total = 0
        for path in self.paths:
            if path.suffix.lower() not in VID_SUFFIXES:
                total += 1
                continue
            cap = cv2.VideoCapture(str(path))
            n = _frame_count(cap)
            cap.release()
            if not n:
                return None
            total += n
        return total

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            try:
                yield from _file_frames(path)
            except OSError as e:  # ImageReadError, SourceError
                if self.strict:
                    raise
                LOGGER.warning("skipped %s: %s", path, e)


def _media_files(folder: Path) -> list[Path]:
    """Images and videos directly inside ``folder`` (not recursive), sorted by name."""
    media = IMG_SUFFIXES | VID_SUFFIXES
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in media)


# --------------------------------------------------------------------------- cameras and streams
def _capture_target(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _capture_label(target: int | str) -> str:
    return f"webcam{target}" if isinstance(target, int) else str(target)


class CaptureSource:
    """Webcams and network streams, opened on construction, read frame by frame in turn.

    With several streams, one frame is read from each open stream per round (no background
    threads, so a slow stream slows the others). A stream that stops delivering frames is
    reopened up to :data:`STREAM_RETRIES` times, :data:`RETRY_DELAY_S` apart (frame numbers go
    on); then it is dropped with a warning, and iteration ends normally when none is left, so
    the caller saves what was done. A capture that announces a frame count (a file served as a
    stream) is not reconnected: it has ended.
    """

    live = True

    def expected_frames(self) -> None:
        """Unknown: webcams and streams go on until they stop."""
        return None

    def __init__(self, targets: Sequence[int | str]) -> None:
        if not targets:
            raise SourceError("no stream to open")
        self.targets = list(targets)
        self.labels = [_capture_label(t) for t in targets]
        self.caps: list[cv2.VideoCapture] = []
        try:
            for target in self.targets:
                self.caps.append(_open_capture(target, self._what(target)))
        except SourceError:
            self.close()
            raise

    @staticmethod
    def _what(target: int | str) -> str:
        if isinstance(target, int):
            return f"webcam {target} (no camera at that index?)"
        return f"stream {_capture_label(target)}"

    def close(self) -> None:
        for cap in self.caps:
            cap.release()

    def _reopen(self, k: int, attempt: int) -> bool:
        """Release stream ``k`` and open it again; False if it does not open."""
        LOGGER.warning("%s: no frame; reconnecting (attempt %d of %d)", self.labels[k], attempt,
                       STREAM_RETRIES)
        self.caps[k].release()
        time.sleep(RETRY_DELAY_S)
        try:
            self.caps[k] = _open_capture(self.targets[k], self._what(self.targets[k]))
        except SourceError:
            return False
        return True

    def _read(self, k: int) -> np.ndarray | None:
        """The next frame of stream ``k``, or None when it is over: a live stream gets
        :data:`STREAM_RETRIES` reconnections (opens that give no frame count too) per drop."""
        ok, img = self.caps[k].read()
        attempt = 0
        while not ok and not _frame_count(self.caps[k]) and attempt < STREAM_RETRIES:
            attempt += 1
            if self._reopen(k, attempt):
                ok, img = self.caps[k].read()
        return img if ok else None

    def __iter__(self) -> Iterator[Frame]:
        active = list(range(len(self.caps)))
        fps = [_fps(cap) for cap in self.caps]
        index = [0] * len(self.caps)
        try:
            while active:
                for k in list(active):
                    img = self._read(k)
                    if img is None:
                        self._log_end(k, index[k])
                        active.remove(k)
                        continue
                    yield Frame(to_bgr_uint8(img), self.labels[k], index[k], fps[k])
                    index[k] += 1
        finally:
            self.close()

    def _log_end(self, k: int, count: int) -> None:
        if _frame_count(self.caps[k]):
            LOGGER.info("%s: no more frames (%d read)", self.labels[k], count)
        else:
            LOGGER.warning("%s: lost after %d frames and %d reconnection attempts; closed",
                           self.labels[k], count, STREAM_RETRIES)


def read_stream_list(path: PathLike) -> list[int | str]:
    """Stream URLs (and webcam indices) listed one a line; blank lines and ``#`` comments skipped."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    return [_capture_target(ln) for ln in lines if ln and not ln.startswith("#")]


def _is_stream_list(path: Path) -> bool:
    """A ``.streams`` file, or a ``.txt`` whose every entry is a URL or a webcam index."""
    if path.suffix.lower() == ".streams":
        return True
    if path.suffix.lower() != ".txt" or not path.is_file():
        return False
    entries = read_stream_list(path)
    return bool(entries) and all(isinstance(e, int) or _is_url(e) for e in entries)


# --------------------------------------------------------------------------- arrays
def _array_bgr(item: Any) -> np.ndarray:
    """A numpy image (BGR, any depth/channels) or a PIL image as ``HxWx3`` ``uint8`` BGR."""
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3) or item.size == 0:
            raise ValueError(f"expected an HxW or HxWxC image array, got shape {item.shape}")
        return to_bgr_uint8(np.ascontiguousarray(item))
    if hasattr(item, "convert") and hasattr(item, "mode"):  # PIL.Image.Image
        from PIL import ImageOps  # upright, as read_image gives the same file (EXIF orientation)

        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(item).convert("RGB"))[..., ::-1])
    raise TypeError(f"expected a numpy array or a PIL image, got {type(item).__name__}")


class ArraySource:
    """In-memory images (numpy BGR arrays or PIL images), named ``image0``, ``image1``, ..."""

    live = False

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def expected_frames(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Frame]:
        for i, item in enumerate(self.items):
            yield Frame(_array_bgr(item), f"image{i}")


Source = FileSource | CaptureSource | ArraySource


# --------------------------------------------------------------------------- dispatch
def open_source(source: PathLike | int) -> Source:
    """The source named by a ``--source`` value (see the module docstring for the forms)."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if (text.isdigit() and not path.exists()) or _is_url(text):
        return CaptureSource([_capture_target(text)])
    if path.suffix.lower() == ".streams" and not path.is_file():
        raise FileNotFoundError(f"stream list not found: {text}")
    if _is_stream_list(path):
        return CaptureSource(read_stream_list(path))
    if path.is_dir():
        files = _media_files(path)
        if not files:
            raise SourceError(f"no images or videos in folder {text}")
        return FileSource(files)
    if path.is_file():
        return _file_source(path)
    if GLOB_CHARS.search(text):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not matches:
            raise FileNotFoundError(f"no files match {text}")
        return FileSource(matches)
    raise FileNotFoundError(f"source not found: {text}")


def _file_source(path: Path) -> FileSource:
    """A single media file (strict), or a ``.txt`` list of files."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        listed = find_images(path)
        if not listed:
            raise SourceError(f"{path} lists no files")
        return FileSource(listed)
    if suffix in IMG_SUFFIXES or suffix in VID_SUFFIXES:
        return FileSource([path], strict=True)
    raise SourceError(f"unsupported source {path}: not an image, video, folder, glob, .txt list, "
                      "webcam index or stream URL")


def as_source(source: Any) -> Source:
    """Any accepted input: a source (returned as is), a ``--source`` string or path, a list of
    file paths, or numpy arrays / PIL images (one or a list)."""
    if isinstance(source, (FileSource, CaptureSource, ArraySource)):
        return source
    if isinstance(source, (str, Path, int)):
        return open_source(source)
    if isinstance(source, (list, tuple)):
        if not source:
            raise SourceError("empty source list")
        if all(isinstance(s, (str, Path)) for s in source):
            return FileSource(source)
        return ArraySource(source)
    return ArraySource([source])
