"""Checking YOLO label files against their images, and caching the result.

:func:`scan_dataset` checks every image and label once and remembers the result in a ``.cache``
file keyed on the files' names, sizes and mtimes.

Bad data never stops training and is never used silently: it is skipped or repaired and listed
in one :class:`DataReport` (logged once). The only fatal label error is a class id outside
``[0, nc)`` (:class:`LabelError`, naming the file and line).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from utils.data.config import PathLike, image_to_label_path, sources_digest
from utils.data.images import ImageReadError, read_image
from utils.io import atomic_write
from utils.paths import user_cache_dir

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = "dynamicdet-labels-1"
MIN_BOX_PIXELS = 1.0  # boxes narrower or lower than this (after clipping) are dropped
COORD_TOLERANCE = 1e-6  # coordinates this far outside [0, 1] are not reported as clipped

__all__ = [
    "LabelError", "DataIssue", "DataReport", "Sample", "parse_label_file", "read_label_lines",
    "check_sample",
    "scan_dataset", "default_cache_dir",
]


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


def _shown(token: str, limit: int = 24) -> str:
    """A token quoted for a message, cut to ``limit`` characters (fuzzed files hold anything)."""
    return repr(token if len(token) <= limit else token[:limit] + "...")


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
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.array([values[0], (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2,
                               xs.max() - xs.min(), ys.max() - ys.min()])
    if values[0] != round(values[0]):
        return None, f"class id {_shown(tokens[0])} is not an integer"
    return values, ""


def _check_class(cls_id: float, nc: int | None, file: Path, line: int) -> None:
    if cls_id < 0 or (nc is not None and cls_id >= nc):
        valid = f"[0, {nc - 1}]" if nc is not None else "non-negative"
        raise LabelError(f"{file}:{line}: class id {int(cls_id)} is outside {valid}")


def _fix_box(values: np.ndarray, img_hw: tuple[int, int], file: Path,
             line: int) -> tuple[np.ndarray | None, DataIssue | None]:
    """Clip a normalised box to the image; (None, issue) if nothing sensible is left."""
    cls_id, cx, cy, w, h = values
    with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow to inf: no area
        corners = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    clipped = corners.clip(0.0, 1.0)
    pw, ph = (clipped[2] - clipped[0]) * img_hw[1], (clipped[3] - clipped[1]) * img_hw[0]
    if (w <= 0 or h <= 0 or not np.isfinite(corners).all() or pw < MIN_BOX_PIXELS
            or ph < MIN_BOX_PIXELS):
        return None, _label_issue("degenerate", file, line,
                                  f"box {cx:.4g} {cy:.4g} {w:.4g} {h:.4g} has no area in the image")
    issue = None
    if np.abs(corners - clipped).max() > COORD_TOLERANCE:
        issue = _label_issue("clipped", file, line, "coordinates outside [0, 1]")
    box = np.array([cls_id, (clipped[0] + clipped[2]) / 2, (clipped[1] + clipped[3]) / 2,
                    clipped[2] - clipped[0], clipped[3] - clipped[1]])
    return box, issue


def read_label_lines(file: PathLike) -> list[str]:
    """The lines of a label file, numbered as an editor shows them (``lines[0]`` is line 1).

    UTF-8 with or without a BOM, or UTF-16 with a BOM; undecodable bytes become U+FFFD (and
    make their line malformed). Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only, not at the
    other characters :meth:`str.splitlines` breaks on (form feed, ``\\x1c``...).
    """
    data = Path(file).read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    text = data.decode(encoding, errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_label_file(file: PathLike, img_hw: tuple[int, int],
                     nc: int | None = None) -> tuple[np.ndarray, list[DataIssue]]:
    """Parse a YOLO label file into ``(n, 5)`` float32 ``[cls, cx, cy, w, h]`` (normalised).

    Malformed lines are dropped, boxes are clipped to the image, degenerate boxes and exact
    duplicates are dropped; each bad line is returned as ONE :class:`DataIssue` naming the file
    and line (a clipped line that duplicates an earlier box is reported as a duplicate only).
    A class id outside ``[0, nc)`` raises :class:`LabelError`. ``img_hw`` is the image size
    (for pixel checks).
    """
    file = Path(file)
    rows: list[np.ndarray] = []
    seen: dict[tuple, int] = {}
    issues: list[DataIssue] = []
    for line_no, text in enumerate(read_label_lines(file), 1):
        tokens = text.split()
        if not tokens:
            continue
        values, reason = _parse_values(tokens)
        if values is None:
            issues.append(_label_issue("malformed_line", file, line_no, reason))
            continue
        _check_class(values[0], nc, file, line_no)
        box, issue = _fix_box(values, img_hw, file, line_no)
        key = tuple(np.round(box, 6)) if box is not None else None
        if key in seen:
            issue = _label_issue("duplicate", file, line_no, f"same as line {seen[key]}")
        elif box is not None:
            seen[key] = line_no
            rows.append(box)
        issues += [issue] if issue else []
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
    return user_cache_dir("labels")


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
    try:
        atomic_write(path, lambda tmp: _savez(tmp, arrays))
        return True
    except OSError:
        return False


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append '.npz' to a path
        np.savez(f, **arrays)


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
