"""Videos and streams that go wrong: a corrupt frame mid-video, a stream that drops, memory on a
long video (see utils/data/sources.py)."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

import detect
from tests.conftest import tiny_checkpoint
from utils.data import sources
from utils.data.sources import CaptureSource, open_source
from utils.inference.transform import LetterboxTransform

REAL_CAPTURE = cv2.VideoCapture
HW = (48, 64)


def _brightness(i: int) -> int:
    return 10 + 15 * i


def _write_video(path: Path, n: int, hw: tuple[int, int] = HW) -> Path:
    """An MJPG .avi: frame ``i`` is a gradient around brightness ``_brightness(i)`` (a few kB each)."""
    ramp = np.linspace(-8, 8, hw[1])[None, :, None] + np.linspace(-8, 8, hw[0])[:, None, None]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (hw[1], hw[0]))
    for i in range(n):
        writer.write(np.clip(_brightness(i % 16) + ramp, 0, 255).astype(np.uint8).repeat(3, 2))
    writer.release()
    return path


def _jpeg_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each JPEG frame (SOI to EOI) inside an MJPG .avi."""
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    return [(s, data.index(b"\xff\xd9", s) + 2) for s in starts]


def _corrupt_frames(path: Path, frames: list[int]) -> None:
    """Overwrite the given JPEG frames with random bytes, keeping the container intact."""
    data = bytearray(path.read_bytes())
    spans = _jpeg_spans(bytes(data))
    rng = np.random.default_rng(0)
    for k in frames:
        start, end = spans[k]
        data[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _frame_number(img: np.ndarray) -> int:
    return int(np.argmin([abs(img.mean() - _brightness(i)) for i in range(16)]))


# --------------------------------------------------------------------------- corrupt frames
@pytest.mark.parametrize("bad", [[5], [3, 7], [4, 5, 6]])
def test_corrupt_frames_are_skipped_with_a_warning(tmp_path: Path, bad: list[int],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    video = _write_video(tmp_path / "clip.avi", 12)
    _corrupt_frames(video, bad)
    with caplog.at_level(logging.WARNING, logger="utils.data.sources"):
        frames = list(open_source(video))
    kept = [i for i in range(12) if i not in bad]
    assert [f.index for f in frames] == kept
    assert [_frame_number(f.img) for f in frames] == kept  # the right pictures, none repeated
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(str(video) in w and "could not be decoded" in w for w in warnings)
    assert any(f"frame(s) {bad[0]}-" in w for w in warnings)


def test_truncated_video_gives_what_it_has(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = _write_video(tmp_path / "clip.avi", 12)
    data = video.read_bytes()
    start, end = _jpeg_spans(data)[8]
    video.write_bytes(data[:(start + end) // 2])  # cut inside frame 8: no index, frames 8-11 gone
    with caplog.at_level(logging.WARNING, logger="utils.data.sources"):
        frames = list(open_source(video))
    assert [f.index for f in frames] == list(range(8))
    assert f"video {video}: stopped at frame 8 of 12" in caplog.text


# --------------------------------------------------------------------------- dropping streams
class FakeStream:
    """A live capture (no frame count) that delivers ``n_frames`` frames, then fails to read."""

    def __init__(self, n_frames: int, start: int, log: list[str]) -> None:
        self.n, self.start, self.read_count, self.log, self.opened = n_frames, start, 0, log, True

    def isOpened(self) -> bool:  # cv2's name
        return self.opened

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.read_count >= self.n:
            return False, None
        self.read_count += 1
        return True, np.full((*HW, 3), _brightness(self.start + self.read_count - 1), np.uint8)

    def release(self) -> None:
        self.opened = False
        self.log.append("release")


def _fake_drops(monkeypatch: pytest.MonkeyPatch, url: str, connections: list[int | None]) -> list[str]:
    """``cv2.VideoCapture(url)`` gives the planned connections in turn: n frames each, or None
    (the connection fails to open); afterwards nothing opens. Other targets open for real."""
    log: list[str] = []
    plan, delivered = list(connections), [0]

    def capture(target, *args):
        if target != url:
            return REAL_CAPTURE(target, *args)
        n = plan.pop(0) if plan else None
        log.append(f"open {n}")
        cap = FakeStream(n or 0, delivered[0], log)
        cap.opened = n is not None
        delivered[0] += n or 0
        return cap

    monkeypatch.setattr(cv2, "VideoCapture", capture)
    monkeypatch.setattr(sources, "RETRY_DELAY_S", 0.0)
    return log


def test_dropped_stream_reconnects_then_closes_cleanly(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    url = "rtsp://127.0.0.1:8554/cam"
    log = _fake_drops(monkeypatch, url, [5, None, 3])  # drop, a failed reconnect, 3 more, gone
    with caplog.at_level(logging.WARNING, logger="utils.data.sources"):
        frames = list(open_source(url))
    assert [f.index for f in frames] == list(range(8))
    assert [_frame_number(f.img) for f in frames] == list(range(8))
    assert log.count("open None") == 1 + sources.STREAM_RETRIES  # 1 failed, then all retries
    assert log.count("release") >= sum(e.startswith("open") for e in log)  # nothing left open
    text = caplog.text
    assert "reconnecting (attempt 1 of 3)" in text and f"{url}: lost after 8 frames" in text


def test_each_drop_gets_its_own_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "rtsp://127.0.0.1:8554/flaky"
    log = _fake_drops(monkeypatch, url, [2, None, None, 2, None, 2])  # recovers twice, then gone
    frames = list(CaptureSource([url]))
    assert [f.index for f in frames] == list(range(6))
    assert log.count("open None") == 3 + sources.STREAM_RETRIES


def test_stream_that_opens_but_gives_no_frame_is_not_retried_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "rtsp://127.0.0.1:8554/mute"
    log = _fake_drops(monkeypatch, url, [2] + [0] * 20)  # reconnections open, but never deliver
    frames = list(CaptureSource([url]))
    assert len(frames) == 2 and log.count("open 0") == sources.STREAM_RETRIES


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("w") / "dy.pt")


def test_detect_saves_what_was_done_when_a_stream_drops(weights: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url = "rtsp://127.0.0.1:8554/live"
    _fake_drops(monkeypatch, url, [4, None, 2])
    monkeypatch.delenv("DISPLAY", raising=False)
    summary = detect.run(weights=str(weights), source=url, img_size=64, device="cpu",
                         project=str(tmp_path / "runs"), conf_thres=0.5)
    assert summary["frames"] == 6
    (saved,) = [Path(p) for p in summary["saved"]]
    cap = REAL_CAPTURE(str(saved))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 6
    cap.release()


# --------------------------------------------------------------------------- long videos
def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2 ** 20


@pytest.mark.slow
def test_long_video_keeps_resident_memory_flat(tmp_path: Path) -> None:
    """5000 frames through the source and the batcher: RSS after the first 500 and at the end.

    A benchmark-style check (no timing): the growth printed is the figure in docs/reliability.md."""
    n, warmup = 5000, 500
    video = _write_video(tmp_path / "long.avi", n)
    rss: dict[str, float] = {}
    count = 0
    for batch in LetterboxTransform(64, 32).batches(open_source(video), batch_size=8):
        count += len(batch.frames)
        if "warm" not in rss and count >= warmup:
            rss["warm"] = _rss_mb()
    rss["end"] = _rss_mb()
    growth = rss["end"] - rss["warm"]
    print(f"long video: {count} frames, RSS {rss['warm']:.1f} -> {rss['end']:.1f} MB "
          f"(growth {growth:+.2f} MB)")
    assert count == n and growth < 8.0


@pytest.mark.slow
def test_long_video_through_detect_keeps_resident_memory_flat(weights: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """detect.py on 2000 frames (model, NMS, annotated video writer): RSS growth after warm-up."""
    n, warmup = 2000, 200
    video = _write_video(tmp_path / "long.avi", n, hw=(32, 32))
    samples: list[float] = []  # RSS every `warmup` frames

    class MeasuringTally(detect.Tally):
        def add(self, r) -> None:
            super().add(r)
            if self.frames % warmup == 0:
                samples.append(_rss_mb())

    monkeypatch.setattr(detect, "Tally", MeasuringTally)
    monkeypatch.delenv("DISPLAY", raising=False)
    summary = detect.run(weights=str(weights), source=str(video), img_size=32, device="cpu",
                         project=str(tmp_path / "runs"), batch_size=8, conf_thres=0.5)
    growth = samples[-1] - samples[0]
    print(f"detect on a long video: {summary['frames']} frames, RSS after {warmup} "
          f"{samples[0]:.1f} MB, at the end {samples[-1]:.1f} MB (growth {growth:+.2f} MB)")
    assert summary["frames"] == n and growth < 16.0
