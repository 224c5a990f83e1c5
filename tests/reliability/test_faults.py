"""A full disk or a SIGKILL while writing never loses the previous file.

Four kinds of writes, each onto a destination that already holds a previous version:
a checkpoint (``save_checkpoint``), an ONNX export and an OpenVINO folder (``export.run``), and a
download (``download`` from a throttled local HTTP server). Faults:

* ENOSPC from a write: Python-level writes into the destination's temporary file raise
  ``OSError(ENOSPC)`` once a byte budget is used up (budget 0, half and nearly all of the file);
* ENOSPC from fsync: ``os.fsync`` of any of the temporary's files raises (it covers what C++
  code writes: OpenVINO's .xml/.bin);
* SIGKILL: the write runs in a subprocess killed at a random moment of it.

After each fault the destination must be byte-identical to the previous version (or, for a
kill that came after the rename, a complete new version) and nothing else may be left beside it
once the next save ran: a killed process's temporary (``.<name>.pid<pid>-*.tmp``) is removed by
the next write of the same destination. Every count is printed (``pytest -s``).
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import onnx
import pytest
import torch

import export
from models.yolo import build_model
from models.zoo import ZooEntry
from tests.conftest import REPO
from utils.io import TEMP_NAME
from utils.weights.checkpoints import read_checkpoint, save_checkpoint
from utils.weights.downloads import DownloadError, download

NAMES = ["a", "b", "c"]
SIZE = 64
PAYLOADS = [bytes(random.Random(i).randbytes(400_000)) for i in range(2)]  # previous, new download
KILLS = {"checkpoint": 3, "download": 2, "onnx": 2, "openvino": 1}  # kills in turn over the write's duration
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- the four kinds of writes -------------------------------------------------------------------
def weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(path, build_model("yolov7-tiny", nc=len(NAMES), names=NAMES), names=NAMES)


def export_to(ckpt: Path, base: Path, kind: str) -> Path:
    """``export.run`` of ``ckpt`` to ``base``; the ONNX file or the OpenVINO folder."""
    res = export.run(weights=str(ckpt), img_size=SIZE, output=str(base),
                     include=["onnx", "openvino"] if kind == "openvino" else ["onnx"])
    return Path(res[kind])


def entry(url: str, version: int) -> ZooEntry:
    return ZooEntry(url, "yolov7-tiny", 1000, hashlib.sha256(PAYLOADS[version]).hexdigest())


def snapshot(path: Path) -> dict[str, bytes]:
    """A file's bytes, or every file of a folder, by relative name."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return {"": path.read_bytes()} if path.exists() else {}


@dataclass
class Target:
    """One kind of write: ``save(version)`` writes version 0 (previous) or 1 (new) to ``dest``."""

    kind: str
    dest: Path
    save: Callable[[int], object]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Serves PAYLOADS[i] at /<i>.pt, slowly (about 1 s per file) so that a kill lands mid-transfer."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class SlowHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAYLOADS[int(self.path.strip("/").removesuffix(".pt"))]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(0, len(body), 20_000):
                self.wfile.write(body[i:i + 20_000])
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a full disk) or was killed

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {v: weights(root / f"w{v}.pt", seed=v) for v in (0, 1)}


def make_target(kind: str, root: Path, sources: dict[int, Path], url: str) -> Target:
    """The write of ``kind`` into its own folder under ``root``."""
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "checkpoint":
        dest = folder / "last.pt"
        return Target(kind, dest, lambda v: weights(dest, seed=v))
    if kind == "download":
        dest = folder / "zoo.pt"
        return Target(kind, dest, lambda v: download(entry(f"{url}/{v}.pt", v), dest, retries=0, timeout=10))
    dest = folder / ("x.onnx" if kind == "onnx" else "x_openvino")
    return Target(kind, dest, lambda v: export_to(sources[v], folder / "x", kind))


def is_complete_new(target: Target) -> bool:
    """Whether ``target.dest`` holds a complete version 1 (a kill after the rename)."""
    dest = target.dest
    if target.kind == "checkpoint":
        return bool(read_checkpoint(dest)["model"])
    if target.kind == "download":
        return dest.read_bytes() == PAYLOADS[1]
    if target.kind == "onnx":
        onnx.checker.check_model(str(dest))
        return True
    return {p.name for p in dest.iterdir()} == {"x.xml", "x.bin", "metadata.json"} and \
        json.loads((dest / "metadata.json").read_text())["format"] is not None


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def expected_names(target: Target) -> set[str]:
    return {target.dest.name, "x.onnx"} if target.kind == "openvino" else {target.dest.name}


# ---- ENOSPC ---------------------------------------------------------------------------------------
class FullDisk:
    """Python writes into temporaries of ``name`` fail with ENOSPC once ``budget`` bytes are written."""

    def __init__(self, name: str, budget: int) -> None:
        self.name, self.budget, self.written, self.raised = name, budget, 0, 0

    def applies(self, path: object) -> bool:
        parts = Path(os.fsdecode(path)).parts if isinstance(path, (str, bytes, os.PathLike)) else ()
        return any((m := TEMP_NAME.match(p)) is not None and m["name"] == self.name for p in parts)

    def write(self, data: bytes | str) -> None:
        if self.written + len(data) > self.budget:
            self.raised += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)


class LimitedFile:
    """A file object whose writes go through :class:`FullDisk`."""

    def __init__(self, f, disk: FullDisk) -> None:
        self._f, self._disk = f, disk

    def write(self, data):
        self._disk.write(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def __iter__(self):
        return iter(self._f)


def full_disk_on_write(monkeypatch: pytest.MonkeyPatch, disk: FullDisk) -> None:
    real_open = builtins.open

    def limited_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return LimitedFile(f, disk) if any(c in mode for c in "wa+") and disk.applies(file) else f

    monkeypatch.setattr(builtins, "open", limited_open)
    monkeypatch.setattr(io, "open", limited_open)  # pathlib's write_text / write_bytes


def full_disk_on_fsync(monkeypatch: pytest.MonkeyPatch, disk: FullDisk) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if disk.applies(os.readlink(f"/proc/self/fd/{fd}")):
            disk.raised += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


ENOSPC_CASES = [("checkpoint", "write", 0.0), ("checkpoint", "write", 0.5), ("checkpoint", "write", 0.99),
                ("checkpoint", "fsync", None), ("download", "write", 0.0), ("download", "write", 0.5),
                ("download", "write", 0.99), ("download", "fsync", None), ("onnx", "write", 0.0),
                ("onnx", "write", 0.5), ("onnx", "fsync", None), ("openvino", "write", 0.0),
                ("openvino", "fsync", None)]


@pytest.mark.parametrize("kind,where,fraction", ENOSPC_CASES)
def test_enospc_keeps_the_previous_file(kind: str, where: str, fraction: float | None, sources: dict,
                                        server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = make_target(kind, tmp_path, sources, server)
    target.save(0)
    before = snapshot(target.dest)
    size = sum(len(b) for b in before.values())
    disk = FullDisk(target.dest.name, int((fraction or 0) * size))
    with monkeypatch.context() as patch:
        (full_disk_on_write if where == "write" else full_disk_on_fsync)(patch, disk)
        with pytest.raises((OSError, DownloadError)) as raised:
            target.save(1)
    assert disk.raised >= 1, "the fault was not injected"
    assert "No space left" in str(raised.value), raised.value
    assert snapshot(target.dest) == before, "the previous file changed"
    assert leftovers(target.dest.parent, expected_names(target)) == [], "a temporary file was left"
    target.save(1)  # the disk has room again: the new version goes in
    assert snapshot(target.dest) != before
    print(f"ENOSPC on {where} ({fraction if fraction is not None else 'any'} of {size} bytes) during {kind}: "
          f"previous file intact, nothing left")


# ---- SIGKILL --------------------------------------------------------------------------------------
def child_main(kind: str, root: str, w0: str, w1: str, url: str) -> None:
    """Subprocess body: write version 1 of ``kind`` (announced on stdout first)."""
    target = make_target(kind, Path(root), {0: Path(w0), 1: Path(w1)}, url)
    print("start", flush=True)
    target.save(1)
    print("done", flush=True)


def save_in_child(target: Target, root: Path, sources: dict, url: str) -> subprocess.Popen:
    code = "import sys; from tests.reliability.test_faults import child_main; child_main(*sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, target.kind, str(root), str(sources[0]), str(sources[1]),
                             url], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "start", "the writer did not start"
    return proc


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


@pytest.mark.long(60)
@pytest.mark.parametrize("kind", list(KILLS))
def test_sigkill_keeps_the_previous_file(kind: str, sources: dict, server: str, tmp_path: Path) -> None:
    target = make_target(kind, tmp_path, sources, server)
    duration = timed(lambda: target.save(1)) * 1.2  # how long one write of the new version takes here
    rng = random.Random(f"kill-{kind}")
    counts = {"kills": 0, "previous intact": 0, "new complete": 0, "temporaries left": 0, "lost": 0}
    kills = KILLS[kind]
    for trial in range(kills):
        target.save(0)
        before = snapshot(target.dest)
        proc = save_in_child(target, tmp_path, sources, server)
        delay = rng.uniform(duration * trial / kills, duration * (trial + 1) / kills)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts["kills"] += 1
        if snapshot(target.dest) == before:
            counts["previous intact"] += 1
        elif is_complete_new(target):
            counts["new complete"] += 1
        else:
            counts["lost"] += 1
        stale = leftovers(target.dest.parent, expected_names(target))
        assert all((m := TEMP_NAME.match(n)) and int(m["pid"]) == proc.pid for n in stale), \
            f"unrecognisable leftovers after a kill {delay:.2f}s in: {stale}"
        counts["temporaries left"] += len(stale)
        target.save(0)  # the next save removes the dead process's temporaries
        assert leftovers(target.dest.parent, expected_names(target)) == [], "stale temporaries not cleaned"
    print(f"SIGKILL during {kind} ({duration:.2f}s per write): {counts}")
    assert counts["lost"] == 0, counts


# ---- the pieces behind it ---------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer exists
    return proc.pid


def test_stale_temporaries_of_dead_processes_only_are_removed(tmp_path: Path) -> None:
    from utils.io import atomic_write_bytes
    dest = atomic_write_bytes(tmp_path / "f.bin", b"old")
    dead = tmp_path / f".f.bin.pid{dead_pid()}-abc123.tmp"
    live = tmp_path / f".f.bin.pid{os.getpid()}-def456.tmp"  # a write still going on in this process
    other = tmp_path / f".g.bin.pid{dead_pid()}-ghi789.tmp"  # another destination's: not ours to judge
    for p in (dead, live, other):
        p.write_bytes(b"partial")
    atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, live.name, other.name])


def test_folder_set_aside_by_a_killed_two_rename_swap_is_put_back(tmp_path: Path, monkeypatch) -> None:
    """Where renameat2 cannot swap folders, a kill between the two renames leaves the previous
    folder under a ``.old`` name; the next write of that folder restores it first."""
    import utils.io as uio
    monkeypatch.setattr(uio, "_exchange", lambda a, b: False)
    dest = uio.atomic_write_dir(tmp_path / "x_openvino", lambda d: (d / "m.xml").write_text("v0"))
    aside = tmp_path / f".x_openvino.pid{dead_pid()}-abc123.old"
    aside.mkdir()
    os.replace(dest, aside / dest.name)  # the state a kill after the first rename leaves
    assert uio.clean_stale(dest) == [aside]
    assert (dest / "m.xml").read_text() == "v0" and sorted(p.name for p in tmp_path.iterdir()) == ["x_openvino"]
    uio.atomic_write_dir(dest, lambda d: (d / "m.xml").write_text("v1"))  # the fallback swap itself
    assert (dest / "m.xml").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["x_openvino"]


def test_fsync_errors_of_the_disk_are_not_ignored(tmp_path: Path, monkeypatch) -> None:
    from utils.io import atomic_write_bytes
    dest = atomic_write_bytes(tmp_path / "f.bin", b"old")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_torch_save_hiding_a_full_disk_is_reported_as_one(tmp_path: Path, monkeypatch) -> None:
    """torch.save turns ENOSPC into "RuntimeError: [enforce fail ...] unexpected pos"."""
    dest = weights(tmp_path / "w.pt", seed=0)
    disk = FullDisk(dest.name, 1_000_000)
    full_disk_on_write(monkeypatch, disk)
    with pytest.raises(OSError, match="No space left on device") as raised:
        weights(dest, seed=1)
    assert str(dest) in str(raised.value)


def test_a_torn_last_row_of_results_csv_is_dropped_on_resume(tmp_path: Path) -> None:
    from utils.io import append_csv, read_csv, truncate_csv
    log = tmp_path / "results.csv"
    for epoch in range(2):
        append_csv(log, {"epoch": epoch, "loss": 0.5, "lr": 0.01})
    with open(log, "a", encoding="utf-8") as f:
        f.write("2,0.4")  # a kill in the middle of the row's write
    truncate_csv(log, 3)
    assert [r["epoch"] for r in read_csv(log)] == ["0", "1"]
