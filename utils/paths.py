"""Run directories (runs/<task>/<name>, runs/<task>/<name>2, ...) and the per-user cache folder."""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """``path`` if free (or ``exist_ok``), else the first free ``path{sep}2``, ``path{sep}3``, ...

    With ``mkdir`` the folder is also created, atomically: a plain ``mkdir`` (which fails if the
    folder exists) claims each candidate in turn, so two processes starting runs at once always
    get different folders and no run writes into an earlier one unless ``exist_ok``.
    """
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    if not mkdir:
        return next(c for c in candidates(path, sep) if not c.exists())
    path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in candidates(path, sep):
        try:
            candidate.mkdir()
        except FileExistsError:
            continue  # taken, possibly a moment ago by another process
        return candidate
    raise AssertionError("unreachable: candidates() never ends")


def candidates(path: Path, sep: str = "") -> Iterator[Path]:
    """``path``, ``path{sep}2``, ``path{sep}3``, ... without end."""
    yield path
    for n in itertools.count(2):
        yield path.with_name(f"{path.name}{sep}{n}")


def latest_checkpoint(root: str | Path) -> Path:
    """The most recently written ``<root>/*/weights/last.pt`` (for ``--resume`` without a path)."""
    root = Path(root)
    runs = sorted(root.glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"--resume: no */weights/last.pt found under {root.resolve()}")
    return runs[-1]


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/dynamicdet/<parts>`` (default ``~/.cache/dynamicdet/<parts>``): what this
    user's runs keep between runs (label caches, route latencies)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).joinpath("dynamicdet", *parts)
