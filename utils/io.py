"""File writing that never leaves a half-written file: atomic writes and the runs' CSV logs.

Every file this project writes for the user to keep (checkpoints, exports, downloads, label
caches, images, results.csv) goes through :func:`atomic_write`: the content is written to a
temporary file beside the destination, flushed to disk, given the permissions any file the
user creates gets (``0o666`` minus the umask), and only then renamed over the destination. A
crash, a full disk or a failed check leaves the previous file untouched and no temporary file.
"""
from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_csv", "atomic_write", "atomic_write_bytes", "atomic_write_text", "file_mode",
           "fsync_path", "read_csv", "truncate_csv"]


def file_mode() -> int:
    """The permission bits a new file gets here: ``0o666`` minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename in it), to disk (best effort: not every
    platform supports it for folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any],
                 check: Callable[[Path], Any] | None = None) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, ``check(tmp)``, then rename onto ``path``.

    The temporary file is fsynced and gets :func:`file_mode` permissions before the rename. On
    any failure (including KeyboardInterrupt) it is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; the user's files get the usual permissions
        write(tmp)
        if check is not None:
            check(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV log (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_csv(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one row to a CSV log, writing the header first when the file is new."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def truncate_csv(path: str | Path, next_epoch: int) -> None:
    """Drop the rows of epochs >= ``next_epoch`` (a resumed run repeats them), atomically."""
    rows = read_csv(path)
    keep = [r for r in rows if int(float(r["epoch"])) < next_epoch]
    if len(keep) == len(rows):
        return

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(keep)

    atomic_write(path, write)
