"""YOLO-format detection datasets: image reading, label checking and caching, batching.

The pipeline is: :func:`utils.data_config.find_images` -> :func:`scan_dataset` (checks every
image and label once, remembers the result in a ``.cache`` file) -> :class:`YoloDataset`
(loading + augmentation) -> :func:`collate_fn` -> :func:`create_dataloader`.

Bad data never stops training and is never used silently: it is skipped or repaired and listed
in one :class:`DataReport` (logged once). The only fatal label error is a class id outside
``[0, nc)`` (:class:`LabelError`, naming the file and line).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from tqdm import tqdm

from utils.augment import (AugmentConfig, augment_hsv, flip_lr, flip_ud, letterbox, mixup,
                           mosaic4, random_perspective, PAD_VALUE)
from utils.boxes import clip_boxes, xywhn2xyxy, xyxy2xywhn
from utils.data_config import PathLike, find_images, image_to_label_path, sources_digest

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = "dynamicdet-labels-1"
MIN_BOX_PIXELS = 1.0  # boxes narrower or lower than this (after clipping) are dropped
COORD_TOLERANCE = 1e-6  # coordinates this far outside [0, 1] are not reported as clipped

__all__ = [
    "ImageReadError", "LabelError", "DataIssue", "DataReport", "Sample", "read_image",
    "to_bgr_uint8", "parse_label_file", "check_sample", "scan_dataset", "default_cache_dir",
    "rect_batch_shapes", "YoloDataset", "collate_fn", "seed_worker", "create_dataloader",
]


# --------------------------------------------------------------------------- image reading
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
    """Read an image as ``HxWx3`` ``uint8`` BGR (EXIF orientation applied).

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


# --------------------------------------------------------------------------- data report
class LabelError(ValueError):
    """A label that cannot be repaired, e.g. a class id outside ``[0, nc)``."""


@dataclass
class DataIssue:
    """One problem found in the data and what was done about it."""

    kind: str  # missing_image | empty_image | corrupt_image | missing_label | unreadable_label |
    #            malformed_line | clipped | degenerate | duplicate
    file: str
    action: str
    detail: str = ""
    line: int | None = None

    def describe(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where} ({self.detail})" if self.detail else where


@dataclass
class DataReport:
    """Structured summary of a dataset scan (also stored in the label cache)."""

    n_images: int = 0
    n_usable: int = 0
    n_boxes: int = 0
    n_backgrounds: int = 0
    issues: list[DataIssue] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of issues per kind."""
        out: dict[str, int] = {}
        for issue in self.issues:
            out[issue.kind] = out.get(issue.kind, 0) + 1
        return out

    def by_kind(self, kind: str) -> list[DataIssue]:
        return [i for i in self.issues if i.kind == kind]

    def summary(self, prefix: str = "", max_listed: int = 10) -> str:
        """A multi-line human readable summary listing files per kind of issue."""
        lines = [f"{prefix}{self.n_images} images, {self.n_usable} usable, "
                 f"{self.n_images - self.n_usable} skipped, {self.n_backgrounds} backgrounds, "
                 f"{self.n_boxes} boxes"]
        for kind, count in self.counts().items():
            items = self.by_kind(kind)
            listed = "; ".join(i.describe() for i in items[:max_listed])
            more = f"; ... and {count - max_listed} more" if count > max_listed else ""
            lines.append(f"  {kind} x{count} -> {items[0].action}: {listed}{more}")
        return "\n".join(lines)

    def log(self, prefix: str = "") -> None:
        """Log the summary once: a warning if anything was skipped or repaired."""
        serious = any(i.kind != "missing_label" for i in self.issues)
        LOGGER.log(logging.WARNING if serious else logging.INFO, self.summary(prefix))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DataReport":
        raw = json.loads(text)
        raw["issues"] = [DataIssue(**i) for i in raw.get("issues", [])]
        return cls(**raw)


# --------------------------------------------------------------------------- label parsing
def _label_issue(kind: str, file: Path, line: int, detail: str) -> DataIssue:
    actions = {"malformed_line": "line dropped", "clipped": "box clipped to the image",
               "degenerate": "box dropped", "duplicate": "duplicate dropped"}
    return DataIssue(kind, str(file), actions[kind], detail, line)


def _parse_values(tokens: list[str]) -> tuple[np.ndarray | None, str]:
    """Numbers of one label line as [cls, cx, cy, w, h], or (None, reason)."""
    if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
        return None, f"expected 5 columns (or a polygon), got {len(tokens)}"
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        return None, "non-numeric value"
    if not np.isfinite(values).all():
        return None, "non-finite value"
    if len(values) > 5:  # polygon "cls x1 y1 x2 y2 ..." -> its bounding box
        xs, ys = values[1::2], values[2::2]
        values = np.array([values[0], (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2,
                           xs.max() - xs.min(), ys.max() - ys.min()])
    if values[0] != round(values[0]):
        return None, f"class id {tokens[0]!r} is not an integer"
    return values, ""


def _check_class(cls_id: float, nc: int | None, file: Path, line: int) -> None:
    if cls_id < 0 or (nc is not None and cls_id >= nc):
        valid = f"[0, {nc - 1}]" if nc is not None else "non-negative"
        raise LabelError(f"{file}:{line}: class id {int(cls_id)} is outside {valid}")


def _fix_box(values: np.ndarray, img_hw: tuple[int, int], file: Path,
             line: int) -> tuple[np.ndarray | None, DataIssue | None]:
    """Clip a normalised box to the image; (None, issue) if nothing sensible is left."""
    cls_id, cx, cy, w, h = values
    corners = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    clipped = corners.clip(0.0, 1.0)
    pw, ph = (clipped[2] - clipped[0]) * img_hw[1], (clipped[3] - clipped[1]) * img_hw[0]
    if w <= 0 or h <= 0 or pw < MIN_BOX_PIXELS or ph < MIN_BOX_PIXELS:
        return None, _label_issue("degenerate", file, line,
                                  f"box {cx:.4g} {cy:.4g} {w:.4g} {h:.4g} has no area in the image")
    issue = None
    if np.abs(corners - clipped).max() > COORD_TOLERANCE:
        issue = _label_issue("clipped", file, line, "coordinates outside [0, 1]")
    box = np.array([cls_id, (clipped[0] + clipped[2]) / 2, (clipped[1] + clipped[3]) / 2,
                    clipped[2] - clipped[0], clipped[3] - clipped[1]])
    return box, issue


def parse_label_file(file: PathLike, img_hw: tuple[int, int],
                     nc: int | None = None) -> tuple[np.ndarray, list[DataIssue]]:
    """Parse a YOLO label file into ``(n, 5)`` float32 ``[cls, cx, cy, w, h]`` (normalised).

    Malformed lines are dropped, boxes are clipped to the image, degenerate boxes and exact
    duplicates are dropped; each case is returned as a :class:`DataIssue`. A class id outside
    ``[0, nc)`` raises :class:`LabelError`. ``img_hw`` is the image size (for pixel checks).
    """
    file = Path(file)
    rows: list[np.ndarray] = []
    seen: dict[tuple, int] = {}
    issues: list[DataIssue] = []
    text_lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    for line_no, text in enumerate(text_lines, 1):
        tokens = text.split()
        if not tokens:
            continue
        values, reason = _parse_values(tokens)
        if values is None:
            issues.append(_label_issue("malformed_line", file, line_no, reason))
            continue
        _check_class(values[0], nc, file, line_no)
        box, issue = _fix_box(values, img_hw, file, line_no)
        issues += [issue] if issue else []
        if box is None:
            continue
        key = tuple(np.round(box, 6))
        if key in seen:
            issues.append(_label_issue("duplicate", file, line_no, f"same as line {seen[key]}"))
            continue
        seen[key] = line_no
        rows.append(box)
    labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
    return labels, issues


# --------------------------------------------------------------------------- scanning
@dataclass
class Sample:
    """The checked state of one image: its labels, size and problems (``shape`` None = unusable)."""

    im_file: str
    labels: np.ndarray
    shape: tuple[int, int] | None
    issues: list[DataIssue]


def check_sample(im_file: PathLike, label_file: PathLike, nc: int | None = None) -> Sample:
    """Read one image and its label file; never raises except :class:`LabelError`."""
    im_file, label_file = Path(im_file), Path(label_file)
    empty = np.zeros((0, 5), dtype=np.float32)
    if not im_file.is_file():
        issue = DataIssue("missing_image", str(im_file), "image skipped", "file not found")
        return Sample(str(im_file), empty, None, [issue])
    if im_file.stat().st_size == 0:
        issue = DataIssue("empty_image", str(im_file), "image skipped", "0 bytes")
        return Sample(str(im_file), empty, None, [issue])
    try:
        shape = read_image(im_file).shape[:2]
    except ImageReadError:
        issue = DataIssue("corrupt_image", str(im_file), "image skipped", "cannot decode")
        return Sample(str(im_file), empty, None, [issue])
    if not label_file.exists():
        issue = DataIssue("missing_label", str(label_file), "used as background")
        return Sample(str(im_file), empty, shape, [issue])
    try:
        labels, issues = parse_label_file(label_file, shape, nc)
    except OSError as e:
        issue = DataIssue("unreadable_label", str(label_file), "image skipped", type(e).__name__)
        return Sample(str(im_file), empty, None, [issue])
    return Sample(str(im_file), labels, shape, issues)


def _files_hash(im_files: Sequence[Path], label_files: Sequence[Path]) -> str:
    """Hash of names, sizes and modification times of all images and labels."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for path in (*im_files, *label_files):
        try:
            st = os.stat(path)
            digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """Per-user folder for label caches that cannot live next to the labels."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynamicdet" / "labels"


def _cache_paths(label_files: Sequence[Path], sources: Sequence[PathLike],
                 cache_dir: PathLike | None) -> list[Path]:
    """Candidate cache files: next to the labels folder, then in the cache folder."""
    label_dir = label_files[0].parent
    single_dir = len(sources) == 1 and Path(sources[0]).is_dir()
    stem = label_dir.name if single_dir else f"{label_dir.name}-{sources_digest(sources)}"
    name = f"{stem}.cache"
    primary = label_dir.parent / name
    fallback_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fallback = fallback_dir / f"{sources_digest([primary])}-{name}"
    return [primary, fallback]


def _save_cache(path: Path, samples: Sequence[Sample], report: DataReport, key: str) -> bool:
    """Write the cache atomically (temp file + rename); False if the folder is not writable."""
    meta = {"version": CACHE_VERSION, "hash": key, "im_files": [s.im_file for s in samples],
            "report": report.to_json()}
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        "shapes": np.array([s.shape for s in samples], dtype=np.int64).reshape(-1, 2),
        "counts": np.array([len(s.labels) for s in samples], dtype=np.int64),
        "labels": np.concatenate([s.labels for s in samples] + [np.zeros((0, 5), np.float32)]),
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def _load_cache(path: Path, key: str) -> tuple[list[Sample], DataReport] | None:
    """Samples and report from a cache file, or None if absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode("utf-8"))
            if meta.get("version") != CACHE_VERSION or meta.get("hash") != key:
                return None
            shapes, counts, labels = data["shapes"], data["counts"], data["labels"]
    except (OSError, ValueError, KeyError) as e:
        LOGGER.warning("ignoring unreadable label cache %s (%s)", path, e)
        return None
    chunks = np.split(labels, np.cumsum(counts)[:-1]) if len(counts) else []
    samples = [Sample(f, lab, (int(s[0]), int(s[1])), [])
               for f, lab, s in zip(meta["im_files"], chunks, shapes)]
    return samples, DataReport.from_json(meta["report"])


def _build_report(samples: Sequence[Sample]) -> DataReport:
    report = DataReport(n_images=len(samples))
    for s in samples:
        report.issues += s.issues
        if s.shape is not None:
            report.n_usable += 1
            report.n_boxes += len(s.labels)
            report.n_backgrounds += int(len(s.labels) == 0)
    return report


def _check_classes(samples: Sequence[Sample], nc: int | None) -> None:
    """Raise :class:`LabelError` (with file and line) for cached labels with class >= nc."""
    if nc is None:
        return
    for s in samples:
        if len(s.labels) and s.labels[:, 0].max() >= nc:
            label_file = image_to_label_path(s.im_file)
            parse_label_file(label_file, s.shape, nc)  # raises, naming the line
            raise LabelError(f"{label_file}: class id {int(s.labels[:, 0].max())} >= nc={nc}")


def _scan(im_files: Sequence[Path], label_files: Sequence[Path], nc: int | None,
          prefix: str) -> list[Sample]:
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check_sample, im_files, label_files, [nc] * len(im_files))
        return list(tqdm(results, total=len(im_files), desc=f"{prefix}scanning images and labels",
                         disable=len(im_files) < 200, leave=False))


def scan_dataset(im_files: Sequence[PathLike], nc: int | None = None,
                 sources: Sequence[PathLike] | None = None, cache_dir: PathLike | None = None,
                 prefix: str = "", use_cache: bool = True) -> tuple[list[Sample], DataReport]:
    """Check all images and labels, reusing a valid ``.cache`` file when possible.

    Returns the usable samples and the report (logged once). The cache is keyed on names,
    sizes and mtimes of every image and label file, so any change triggers a rescan.
    """
    im_files = [Path(f) for f in im_files]
    if not im_files:
        raise FileNotFoundError(f"{prefix}no images found in {list(map(str, sources or []))}")
    label_files = [image_to_label_path(f) for f in im_files]
    key = _files_hash(im_files, label_files)
    paths = _cache_paths(label_files, list(sources or im_files[:1]), cache_dir)
    loaded = None
    if use_cache:
        loaded = next((c for c in (_load_cache(p, key) for p in paths) if c), None)
    if loaded is not None:
        samples, report = loaded
        _check_classes(samples, nc)
        LOGGER.info("%slabels loaded from cache", prefix)
    else:
        scanned = _scan(im_files, label_files, nc, prefix)
        samples = [s for s in scanned if s.shape is not None]
        report = _build_report(scanned)
        if use_cache and not any(_save_cache(p, samples, report, key) for p in paths):
            LOGGER.warning("%scould not write a label cache to %s", prefix, [str(p) for p in paths])
    report.log(prefix)
    if not samples:
        raise FileNotFoundError(f"{prefix}no usable images among {len(im_files)} files")
    return samples, report


# --------------------------------------------------------------------------- rectangles
def rect_batch_shapes(shapes_hw: np.ndarray, batch_size: int, img_size: int, stride: int,
                      pad: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes for rectangular (minimal padding) batches.

    Images are ordered by aspect ratio h/w; each batch gets the (h, w) that fits its most
    extreme image at ``img_size`` on the long side, rounded up to a multiple of ``stride``
    after adding ``pad`` strides. Returns (order, batch_shapes (nb, 2) as (h, w), batch index
    per ordered image).
    """
    aspect = shapes_hw[:, 0] / shapes_hw[:, 1]
    order = np.argsort(aspect, kind="stable")
    aspect = aspect[order]
    batch_index = np.arange(len(order)) // batch_size
    n_batches = int(batch_index[-1]) + 1
    rel = np.ones((n_batches, 2))
    for b in range(n_batches):
        ar = aspect[batch_index == b]
        if ar.max() < 1:
            rel[b] = (ar.max(), 1.0)  # all landscape: full width, tallest height
        elif ar.min() > 1:
            rel[b] = (1.0, 1.0 / ar.min())  # all portrait: full height, widest width
    shapes = np.ceil(rel * img_size / stride + pad).astype(int) * stride
    return order, shapes, batch_index


# --------------------------------------------------------------------------- dataset
class YoloDataset(Dataset):
    """Images and YOLO labels with optional mosaic/mixup/perspective/HSV/flip augmentation.

    Each item is ``(img, labels, path, shapes)``: ``img`` a CHW ``uint8`` RGB tensor,
    ``labels`` an ``(n, 6)`` tensor ``[0, cls, cx, cy, w, h]`` (normalised), ``path`` a str and
    ``shapes`` = ``((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))`` to map predictions back to
    the original image (None for mosaic samples).

    Attributes: ``im_files``, ``labels`` (normalised ``[cls, cx, cy, w, h]`` arrays),
    ``shapes`` ((n, 2) original sizes as **(h, w)**), ``report`` (:class:`DataReport`).
    """

    def __init__(self, path: PathLike | Sequence[PathLike], img_size: int = 640,
                 batch_size: int = 16, augment: bool = False, hyp: Mapping[str, Any] | None = None,
                 rect: bool = False, stride: int = 32, pad: float = 0.0,
                 cache_images: bool | str = False, nc: int | None = None, prefix: str = "",
                 cache_dir: PathLike | None = None, root: PathLike | None = None, seed: int = 0):
        sources = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        samples, self.report = scan_dataset(find_images(sources, root), nc, sources, cache_dir,
                                            prefix)
        self.img_size, self.stride, self.augment, self.rect = img_size, stride, augment, rect
        self.aug = AugmentConfig.from_hyp(hyp) if augment else AugmentConfig()
        self.mosaic = augment and not rect and self.aug.mosaic > 0
        self.prefix = prefix
        self.batch_shapes: np.ndarray | None = None
        self.batch_index: np.ndarray | None = None
        self._set_samples(samples, batch_size, pad)
        self.rng = np.random.default_rng(seed)
        self.imgs: list[np.ndarray | None] = [None] * len(self.im_files)
        if cache_images:
            self._cache_images(cache_images)

    def _set_samples(self, samples: list[Sample], batch_size: int, pad: float) -> None:
        shapes = np.array([s.shape for s in samples], dtype=np.int64).reshape(-1, 2)
        if self.rect:
            order, self.batch_shapes, self.batch_index = rect_batch_shapes(
                shapes, batch_size, self.img_size, self.stride, pad)
            samples, shapes = [samples[i] for i in order], shapes[order]
        self.im_files = [s.im_file for s in samples]
        self.label_files = [str(image_to_label_path(f)) for f in self.im_files]
        self.labels = [s.labels for s in samples]
        self.shapes = shapes

    def _cache_images(self, mode: bool | str) -> None:
        if mode not in (True, "ram"):
            raise ValueError(f"cache_images must be False, True or 'ram', got {mode!r}")
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            loaded = pool.map(self._resize_loaded, range(len(self)))
            for i, img in enumerate(tqdm(loaded, total=len(self), leave=False,
                                         desc=f"{self.prefix}caching images")):
                self.imgs[i] = img
        gb = sum(im.nbytes for im in self.imgs if im is not None) / 1e9
        LOGGER.info("%scached %d images in RAM (%.2f GB)", self.prefix, len(self), gb)

    @property
    def shapes_wh(self) -> np.ndarray:
        """Original image sizes as (w, h) per image (the order YOLO anchor checks expect)."""
        return self.shapes[:, ::-1].copy()

    def reseed(self, seed: int) -> None:
        """Reset the augmentation random generator (called in each dataloader worker)."""
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.im_files)

    # ---- loading
    def _resize_loaded(self, index: int) -> np.ndarray:
        """Read image ``index`` and resize it so its long side is ``img_size``."""
        img = read_image(self.im_files[index])
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            shrink = r < 1 and not self.augment
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            img = cv2.resize(img, (max(1, round(w0 * r)), max(1, round(h0 * r))),
                             interpolation=interp)
        return img

    def load_image(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Resized BGR image, its original (h0, w0) and its resized (h, w)."""
        img = self.imgs[index]
        if img is None:
            img = self._resize_loaded(index)
        h0, w0 = (int(v) for v in self.shapes[index])
        return img, (h0, w0), img.shape[:2]

    def _load_letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        img, (h0, w0), (h, w) = self.load_image(index)
        target = self.batch_shapes[self.batch_index[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, target, auto=False, scaleup=self.augment)
        labels = self.labels[index]
        pixels = np.zeros((len(labels), 5), dtype=np.float32)
        if len(labels):
            pixels[:, 0] = labels[:, 0]
            pixels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[1] * w, ratio[0] * h, pad[0], pad[1])
        shapes = ((h0, w0), ((ratio[0] * h / h0, ratio[1] * w / w0), pad))
        return img, pixels, shapes

    def _load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        indices = [index, *self.rng.integers(0, len(self), 3)]
        images = [self.load_image(int(i))[0] for i in indices]
        canvas, labels = mosaic4(images, [self.labels[int(i)] for i in indices], self.img_size,
                                 self.rng)
        border = (-self.img_size // 2, -self.img_size // 2)
        return self._perspective(canvas, labels, border)

    def _perspective(self, img: np.ndarray, labels: np.ndarray,
                     border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
        a = self.aug
        return random_perspective(img, labels, a.degrees, a.translate, a.scale, a.shear,
                                  a.perspective, border, self.rng)

    # ---- items
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        for _ in range(len(self)):
            try:
                return self._get(index)
            except ImageReadError as e:  # the file changed after scanning: use another image
                LOGGER.warning("%s%s; using another image instead", self.prefix, e)
                index = (index + 1) % len(self)
        raise ImageReadError(f"{self.prefix}no readable image left in the dataset")

    def _get(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        if self.mosaic and self.rng.random() < self.aug.mosaic:
            img, labels = self._load_mosaic(index)
            shapes = None
            if self.rng.random() < self.aug.mixup:
                other = self._load_mosaic(int(self.rng.integers(0, len(self))))
                img, labels = mixup(img, labels, *other, rng=self.rng)
        else:
            img, labels, shapes = self._load_letterboxed(index)
            if self.augment:
                img, labels = self._perspective(img, labels)
        img, labels = self._photometric_and_flips(img, labels)
        return (*self._to_tensors(img, labels), self.im_files[index], shapes)

    def _photometric_and_flips(self, img: np.ndarray,
                               pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HSV jitter and flips; turns pixel xyxy labels into normalised xywh labels."""
        a = self.aug
        if self.augment:
            augment_hsv(img, a.hsv_h, a.hsv_s, a.hsv_v, self.rng)
        labels = np.zeros((len(pixels), 5), dtype=np.float32)
        if len(pixels):
            h, w = img.shape[:2]
            labels[:, 0] = pixels[:, 0]
            labels[:, 1:] = xyxy2xywhn(clip_boxes(pixels[:, 1:5].copy(), (h, w)), w, h)
        if self.augment and self.rng.random() < a.flipud:
            img, labels = flip_ud(img, labels)
        if self.augment and self.rng.random() < a.fliplr:
            img, labels = flip_lr(img, labels)
        return img, labels

    @staticmethod
    def _to_tensors(img: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        out = torch.zeros((len(labels), 6), dtype=torch.float32)
        if len(labels):
            out[:, 1:] = torch.from_numpy(labels.astype(np.float32))
        return torch.from_numpy(chw), out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, img_size={self.img_size}, "
                f"augment={self.augment}, rect={self.rect})")



# --------------------------------------------------------------------------- batching
def _pad_item(img: torch.Tensor, labels: torch.Tensor,
              hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad an image on the right/bottom to ``hw`` and renormalise its labels accordingly."""
    h, w = img.shape[1:]
    if (h, w) == tuple(hw):
        return img, labels
    out = img.new_full((img.shape[0], *hw), PAD_VALUE)
    out[:, :h, :w] = img
    labels = labels.clone()
    labels[:, [2, 4]] *= w / hw[1]
    labels[:, [3, 5]] *= h / hw[0]
    return out, labels


def collate_fn(batch: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """Stack images (padding unequal sizes) and concatenate labels, setting column 0 to the
    image's index in the batch. Returns (imgs (B,3,H,W) uint8, labels (N,6), paths, shapes)."""
    imgs, labels, paths, shapes = zip(*batch)
    hw = (max(im.shape[1] for im in imgs), max(im.shape[2] for im in imgs))
    items = [_pad_item(im, lab, hw) for im, lab in zip(imgs, labels)]
    out_labels = [lab.clone() for _, lab in items]
    for i, lab in enumerate(out_labels):
        lab[:, 0] = i
    return torch.stack([im for im, _ in items]), torch.cat(out_labels, 0), paths, shapes


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy, random and the dataset's generator from torch's seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


def create_dataloader(path: PathLike | Sequence[PathLike], img_size: int, batch_size: int,
                      stride: int, hyp: Mapping[str, Any] | None = None, augment: bool = False,
                      rect: bool = False, cache_images: bool | str = False, workers: int = 8,
                      pad: float = 0.0, prefix: str = "", rank: int = -1, world_size: int = 1,
                      shuffle: bool = False, seed: int = 0, nc: int | None = None,
                      cache_dir: PathLike | None = None,
                      root: PathLike | None = None) -> tuple[DataLoader, YoloDataset]:
    """Build a :class:`YoloDataset` and a deterministic ``DataLoader`` over it.

    ``batch_size`` is per process. With ``rank >= 0`` a ``DistributedSampler`` over
    ``world_size`` processes is used. ``rect`` implies no shuffling. ``nc`` enables the class
    range check. Returns (loader, dataset).
    """
    if img_size % stride:
        raise ValueError(f"img_size {img_size} must be a multiple of the stride {stride}")
    if rect and shuffle:
        LOGGER.warning("%srect=True is incompatible with shuffle; shuffle disabled", prefix)
        shuffle = False
    dataset = YoloDataset(path, img_size, batch_size, augment, hyp, rect, stride, pad,
                          cache_images, nc, prefix, cache_dir, root, seed + max(rank, 0))
    sampler = None
    if rank >= 0:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    n_workers = max(0, min(workers, os.cpu_count() or 1))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                        sampler=sampler, num_workers=n_workers, collate_fn=collate_fn,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=seed_worker,
                        generator=generator, persistent_workers=n_workers > 0)
    return loader, dataset
