"""Zoo downloads against a local HTTP server: resume, restart, verification, error messages."""
from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from models.zoo import ZOO, ZooEntry, weights_dir, zoo_cfg
from utils.weights.downloads import DownloadError, attempt_download

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
CORRUPT = PAYLOAD[:-1] + b"\x00"
DROP_AT = 30_000  # bytes sent before a dropped connection
ETAG = f'"{SHA256[:16]}"'


class ZooHandler(BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; the path's stem picks a behaviour.

    ok: normal; drop: the first answer stops after DROP_AT bytes, later ones honour Range;
    restart: like drop but Range is ignored (200 + full body); shifted: like drop but a resumed
    answer starts one byte late; flaky: every answer stops early; moved: a 302 to drop.pt (like
    GitHub's release redirect); corrupt: wrong content; small: a tiny body; missing: 404.
    """

    def do_GET(self) -> None:
        self.server.log.append((self.path, self.headers.get("Range")))
        first = sum(path == self.path for path, _ in self.server.log) == 1
        mode = self.path.strip("/").removesuffix(".pt")
        if mode == "missing":
            self.send_error(404)
            return
        if mode == "moved":
            self.send_response(302)
            self.send_header("Location", "/drop.pt")
            self.end_headers()
            return
        body = {"corrupt": CORRUPT, "small": PAYLOAD[:100]}.get(mode, PAYLOAD)
        start = 0 if mode == "restart" else self._range_start()
        start += 1 if mode == "shifted" and start else 0
        cut = mode == "flaky" or (mode in ("drop", "restart", "shifted") and first)
        self._send(body, start, DROP_AT if cut else None)

    def _range_start(self) -> int:
        """First byte of a ``bytes=N-`` request (0 without one)."""
        value = self.headers.get("Range", "")
        return int(value.removeprefix("bytes=").split("-")[0]) if value.startswith("bytes=") else 0

    def _send(self, body: bytes, start: int, stop: int | None) -> None:
        """Headers for the whole remainder from ``start``, then the body up to ``stop`` only."""
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", ETAG)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start:stop])
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@dataclass
class LocalServer:
    """Base URL of the running server and the (path, Range header) of every request."""

    url: str
    log: list[tuple[str, str | None]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A threaded server on 127.0.0.1 with an ephemeral port, shut down after the test."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ZooHandler)
    httpd.log = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield LocalServer(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.log)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty folder, with the cache inside it (never the real ~/.cache)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DYDET_WEIGHTS_DIR", str(tmp_path / "cache"))


def local_zoo(server: LocalServer, min_size: int = 1000) -> dict[str, ZooEntry]:
    """A zoo whose every route on the local server expects PAYLOAD."""
    modes = ("ok", "drop", "restart", "shifted", "flaky", "moved", "corrupt", "small", "missing")
    return {f"{m}.pt": ZooEntry(f"{server.url}/{m}.pt", "yolov7", min_size, SHA256) for m in modes}


def fetch(name: str | Path, server: LocalServer, **kwargs: object) -> Path:
    """attempt_download against the local zoo, without backoff delays."""
    kwargs = {"timeout": 5, "backoff": 0, "zoo": local_zoo(server), **kwargs}
    return attempt_download(name, **kwargs)


def test_zoo_table_lists_the_official_releases() -> None:
    assert set(ZOO) == {"dy-yolov7.pt", "dy-yolov7x.pt", "dy-yolov7-w6.pt", "yolov7.pt",
                        "yolov7x.pt", "yolov7-w6.pt", "yolov7-tiny.pt"}
    for name, entry in ZOO.items():
        owner = "VDIGPKU/DynamicDet" if name.startswith("dy-") else "WongKinYiu/yolov7"
        assert entry.url == f"https://github.com/{owner}/releases/download/v0.1/{name}"
        assert (REPO / "cfg" / f"{entry.cfg}.yaml").is_file()
        assert entry.sha256 is None and entry.min_size >= 10 * 10**6
    assert zoo_cfg("weights/dy-yolov7-w6.pt") == "dy-yolov7-w6"
    assert zoo_cfg("best.pt") is None


def test_download_success_leaves_only_the_file(server: LocalServer, tmp_path: Path) -> None:
    path = fetch("ok.pt", server, cache_dir=tmp_path / "dl")
    assert path == tmp_path / "dl" / "ok.pt"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["ok.pt"]
    assert server.log == [("/ok.pt", None)]


def test_downloaded_weights_get_the_users_file_permissions(server: LocalServer, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = fetch("ok.pt", server, cache_dir=tmp_path / "dl")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 minus the umask, not mkstemp's 0o600


def test_dropped_connection_is_resumed_with_range(server: LocalServer, tmp_path: Path) -> None:
    path = fetch("drop.pt", server)
    assert path.read_bytes() == PAYLOAD
    assert server.log == [("/drop.pt", None), ("/drop.pt", f"bytes={DROP_AT}-")]
    assert sorted(p.name for p in path.parent.iterdir()) == ["drop.pt"]


def test_range_ignored_restarts_from_scratch(server: LocalServer) -> None:
    path = fetch("restart.pt", server)
    assert path.read_bytes() == PAYLOAD
    assert server.log[1] == ("/restart.pt", f"bytes={DROP_AT}-")


def test_redirect_keeps_the_range_header(server: LocalServer) -> None:
    path = fetch("moved.pt", server)
    assert path.read_bytes() == PAYLOAD
    assert server.log == [("/moved.pt", None), ("/drop.pt", None),
                          ("/moved.pt", f"bytes={DROP_AT}-"), ("/drop.pt", f"bytes={DROP_AT}-")]


def test_wrong_resume_position_starts_over(server: LocalServer) -> None:
    path = fetch("shifted.pt", server)
    assert path.read_bytes() == PAYLOAD
    assert [r for _, r in server.log] == [None, f"bytes={DROP_AT}-", None]


def test_retries_exhausted_leaves_nothing(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="closed after"):
        fetch("flaky.pt", server, retries=2)
    assert len(server.log) == 3
    assert list((tmp_path / "cache").iterdir()) == []


def test_sha256_mismatch_is_rejected(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch("corrupt.pt", server)
    assert list((tmp_path / "cache").iterdir()) == []


def test_404_names_url_and_manual_path(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        fetch("missing.pt", server)
    message = str(info.value)
    assert f"{server.url}/missing.pt" in message and "404" in message
    assert str((tmp_path / "cache" / "missing.pt").resolve()) in message
    assert len(server.log) == 1  # a 404 is not retried
    assert list((tmp_path / "cache").iterdir()) == []


def test_file_below_min_size_is_rejected(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="at least 1000"):
        fetch("small.pt", server)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("folder", [".", "weights", "cache"])
def test_local_file_short_circuits(server: LocalServer, tmp_path: Path, folder: str) -> None:
    local = tmp_path / folder / "ok.pt"
    local.parent.mkdir(exist_ok=True)
    local.write_bytes(b"local")
    assert fetch("ok.pt", server).resolve() == local.resolve()
    assert server.log == []


def test_existing_path_returned_as_is(server: LocalServer, tmp_path: Path) -> None:
    own = tmp_path / "runs" / "best.pt"
    own.parent.mkdir()
    own.write_bytes(b"mine")
    assert fetch(own, server) == own
    assert fetch("runs/best.pt", server) == Path("runs/best.pt")
    assert server.log == []


def test_explicit_missing_path_downloads_there(server: LocalServer, tmp_path: Path) -> None:
    path = fetch(tmp_path / "sub" / "ok.pt", server)
    assert path == tmp_path / "sub" / "ok.pt" and path.read_bytes() == PAYLOAD


def test_unknown_name_lists_zoo_names() -> None:
    with pytest.raises(FileNotFoundError) as info:
        attempt_download("nonexistent.pt")
    assert all(name in str(info.value) for name in ZOO)


def test_cache_dir_from_environment(server: LocalServer, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYDET_WEIGHTS_DIR", str(tmp_path / "env-cache"))
    path = fetch("ok.pt", server)
    assert path == tmp_path / "env-cache" / "ok.pt" and path.read_bytes() == PAYLOAD
    assert fetch("ok.pt", server) == path and len(server.log) == 1  # found, not fetched again


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYDET_WEIGHTS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights_dir() == tmp_path / ".cache" / "dynamicdet" / "weights"
