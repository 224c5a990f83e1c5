"""File writing that never leaves a half-written file: atomic writes and the runs' CSV logs.

Every file this project writes for the user to keep (checkpoints, exports, downloads, label
caches, images, results.csv) goes through :func:`atomic_write`: the content is written to a
temporary file beside the destination, flushed to disk, given the permissions any file the
user creates gets (``0o666`` minus the umask), and only then renamed over the destination. A
full disk (``ENOSPC`` from a write or from ``fsync``) or a failed check leaves the previous file
untouched and no temporary file. Folders (OpenVINO exports) go through :func:`atomic_write_dir`.

A process killed outright (SIGKILL, power loss) cannot remove its temporary file. Temporary names
are therefore recognisable, ``.<name>.pid<pid>-<random>.tmp``, and every later write of the same
destination first removes those of processes that no longer exist (:func:`clean_stale`). A
leftover is harmless meanwhile: it is hidden, never read, and the destination is still the
previous complete file. (On a network file system shared by several hosts a pid cannot tell a
dead writer from another host's live one: do not run two hosts' saves into one folder at once.)
"""
from __future__ import annotations

import csv
import ctypes
import errno
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_csv", "atomic_write", "atomic_write_bytes", "atomic_write_dir", "atomic_write_text",
           "clean_stale", "file_mode", "fsync_path", "read_csv", "replace_dir", "temp_prefix", "truncate_csv"]

# .<name>.pid<pid>-<mkstemp's random part>.tmp (or .old: a folder set aside during a replace)
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)-[A-Za-z0-9_]+\.(?P<kind>tmp|old)$")
# fsync errors meaning "not supported here" (some file systems, folders on some platforms)
FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF})
AT_FDCWD, RENAME_EXCHANGE = -100, 2
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def file_mode() -> int:
    """The permission bits a new file gets here: ``0o666`` minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename in it), to disk.

    An error of the disk (ENOSPC, EIO: the data may not be stored) is raised; a platform or file
    system without fsync for this kind of entry (EINVAL, ENOTSUP, a folder that cannot be
    opened) is not an error.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def temp_prefix(path: Path) -> str:
    """Start of this process's temporary names for ``path`` (see :data:`TEMP_NAME`)."""
    return f".{path.name}.pid{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie still counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by dead processes; returns what was removed.

    A folder set aside by an interrupted :func:`replace_dir` (``.old``) is put back first when
    ``path`` itself is missing, so a kill between its two renames loses nothing.
    """
    path = Path(path)
    removed = []
    for entry in path.parent.glob(f".{glob.escape(path.name)}.pid*"):
        match = TEMP_NAME.match(entry.name)
        if match is None or match["name"] != path.name or pid_alive(int(match["pid"])):
            continue
        try:
            if match["kind"] == "old" and (entry / path.name).exists() and not path.exists():
                os.replace(entry / path.name, path)
            _remove(entry)
        except OSError:  # another user's, in a shared folder: not ours to remove, and harmless
            continue
        removed.append(entry)
    return removed


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any],
                 check: Callable[[Path], Any] | None = None) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, ``check(tmp)``, then rename onto ``path``.

    The temporary file is fsynced and gets :func:`file_mode` permissions before the rename. On
    any failure (including KeyboardInterrupt and ENOSPC from a write or fsync) it is removed and
    ``path`` keeps its old content. Stale temporaries of dead processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; the user's files get the usual permissions
        write(tmp)
        if check is not None:
            check(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        full = _hidden_disk_error(e)
        if full is not None:
            raise OSError(full.errno, full.strerror, str(path)) from e
        raise
    fsync_path(path.parent)
    return path


def _hidden_disk_error(error: BaseException) -> OSError | None:
    """A full-disk OSError that a library's clean-up replaced by its own error, if any.

    ``torch.save`` is one: when a write fails with ENOSPC its zip writer's ``__exit__`` raises
    "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", which hides the cause.
    """
    if isinstance(error, OSError):
        return None
    seen = error.__context__
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return seen
        seen = seen.__context__
    return None


def atomic_write_dir(path: str | Path, write: Callable[[Path], Any],
                     check: Callable[[Path], Any] | None = None) -> Path:
    """:func:`atomic_write` for a folder: ``write(tmp)`` fills a temporary folder beside ``path``,
    its files get the usual permissions and are fsynced, ``check(tmp)`` runs, and the folder
    replaces ``path`` (:func:`replace_dir`). On any failure ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp"))
    try:
        write(tmp)
        _settle(tmp)
        if check is not None:
            check(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(path.parent)
    return path


def _settle(folder: Path) -> None:
    """The usual permissions (mkdtemp makes 0700) and every file flushed to disk."""
    mode = file_mode()
    for f in folder.rglob("*"):
        if f.is_file():
            os.chmod(f, mode)
            fsync_path(f)
    os.chmod(folder, mode | (mode & 0o444) >> 2)  # folders also get x where they get r
    fsync_path(folder)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``, deleting the old ``dst``; some folder is always at ``dst``.

    With Linux's ``renameat2(RENAME_EXCHANGE)`` the swap is one atomic step. Elsewhere the old
    folder is first set aside as ``.<name>.pid<pid>-*.old``: a kill between the two renames
    leaves ``dst`` missing until the next write of ``dst`` puts it back (:func:`clean_stale`).
    """
    if not dst.exists():
        os.replace(src, dst)
        return
    if _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the previous folder
        return
    old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=temp_prefix(dst), suffix=".old"))
    os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old / dst.name, dst)  # put the previous folder back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False where the call or flag is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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
    """Append one row to a CSV log, writing the header first when the file is new.

    Every row must have the header's columns: a row with other columns would shift the values
    under the header, so it raises ValueError instead.
    """
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if list(row) != header:
            raise ValueError(f"{path}: a row with columns {list(row)} does not fit the header {header}")
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def truncate_csv(path: str | Path, next_epoch: int) -> None:
    """Keep only the complete rows of epochs < ``next_epoch`` (a resumed run repeats the others;
    a row cut short by a kill is dropped too), atomically."""
    rows = read_csv(path)
    keep = [r for r in rows if _complete(r) and _epoch(r) < next_epoch]
    if len(keep) == len(rows):
        return

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k is not None])
            writer.writeheader()
            writer.writerows(keep)

    atomic_write(path, write)


def _complete(row: Mapping[str, Any]) -> bool:
    """Every column present and no surplus ones (a torn line has fewer, two merged more)."""
    return None not in row and all(v not in (None, "") for v in row.values())


def _epoch(row: Mapping[str, Any]) -> float:
    try:
        return float(row["epoch"])
    except (TypeError, ValueError):
        return float("inf")  # unreadable: dropped
