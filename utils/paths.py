"""Run directories: runs/<task>/<name>, runs/<task>/<name>2, ..."""
from __future__ import annotations

from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "") -> Path:
    """``path`` if free (or ``exist_ok``), else the first free ``path{sep}2``, ``path{sep}3``, ..."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while (candidate := path.with_name(f"{path.name}{sep}{n}")).exists():
        n += 1
    return candidate


def latest_checkpoint(root: str | Path) -> Path:
    """The most recently written ``<root>/*/weights/last.pt`` (for ``--resume`` without a path)."""
    root = Path(root)
    runs = sorted(root.glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"--resume: no */weights/last.pt found under {root.resolve()}")
    return runs[-1]
