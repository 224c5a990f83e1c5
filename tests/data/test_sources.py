"""Inference sources: files, folders, globs, lists, videos, webcams, streams, arrays, batching."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_video
from utils.data.sources import (
    ArraySource,
    CaptureSource,
    FileSource,
    Frame,
    SourceError,
    as_source,
    open_source,
    read_stream_list,
)
from utils.inference.transform import LetterboxTransform

REAL_CAPTURE = cv2.VideoCapture


def _frames(source) -> list[Frame]:
    return list(source)


def _fake_streams(monkeypatch: pytest.MonkeyPatch, urls: dict[str, Path]) -> None:
    """cv2.VideoCapture opens ``urls`` keys from local files; any other target fails to open."""
    def capture(target, *args):
        return REAL_CAPTURE(str(urls.get(target, "/nonexistent/none.avi")), *args)
    monkeypatch.setattr(cv2, "VideoCapture", capture)


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A folder with a colour JPEG, grey, RGBA and 16-bit PNGs, a video, a corrupt and a non-media file."""
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "colour.jpg"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "grey.png"), rng.integers(0, 255, (30, 20), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "rgba.png"), rng.integers(0, 255, (24, 36, 4), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), rng.integers(0, 65535, (20, 30, 3), dtype=np.uint16))
    write_video(tmp_path / "clip.avi", n_frames=3)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("not media\n")
    return tmp_path


def test_single_image(media: Path) -> None:
    src = open_source(media / "colour.jpg")
    assert isinstance(src, FileSource) and src.strict
    (frame,) = _frames(src)
    assert frame.img.shape == (40, 60, 3) and frame.img.dtype == np.uint8
    assert frame.path == str(media / "colour.jpg") and frame.index is None


@pytest.mark.parametrize("name, hw", [("grey.png", (30, 20)), ("rgba.png", (24, 36)), ("deep.png", (20, 30))])
def test_any_depth_or_channels_becomes_bgr_uint8(media: Path, name: str, hw: tuple[int, int]) -> None:
    (frame,) = _frames(open_source(media / name))
    assert frame.img.shape == (*hw, 3) and frame.img.dtype == np.uint8


def test_huge_image(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "huge.jpg"), np.full((3000, 4000, 3), 90, np.uint8))
    (frame,) = _frames(open_source(tmp_path / "huge.jpg"))
    imgs, _ = LetterboxTransform(64, 32).letterbox([frame.img])
    assert frame.img.shape == (3000, 4000, 3) and tuple(imgs.shape) == (1, 3, 64, 64)


def test_folder_skips_corrupt_files_with_a_warning(media: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        frames = _frames(open_source(media))
    names = [Path(f.path).name for f in frames]
    assert names == ["clip.avi"] * 3 + ["colour.jpg", "deep.png", "grey.png", "rgba.png"]
    assert [f.index for f in frames[:3]] == [0, 1, 2]
    assert "broken.jpg" in caplog.text and "notes.txt" not in caplog.text


def test_single_corrupt_or_unsupported_file_raises(media: Path) -> None:
    with pytest.raises(OSError, match="broken.jpg"):
        _frames(open_source(media / "broken.jpg"))
    (media / "table.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match="unsupported source"):
        open_source(media / "table.csv")


def test_glob(media: Path) -> None:
    frames = _frames(open_source(str(media / "*.png")))
    assert sorted(Path(f.path).name for f in frames) == ["deep.png", "grey.png", "rgba.png"]
    with pytest.raises(FileNotFoundError, match="no files match"):
        open_source(str(media / "*.bmp"))


def test_txt_list_resolves_relative_paths_and_skips_missing(media: Path, caplog: pytest.LogCaptureFixture) -> None:
    (media / "list.txt").write_text(f"colour.jpg\n\n{media / 'grey.png'}\nmissing.jpg\nclip.avi\n")
    with caplog.at_level(logging.WARNING):
        frames = _frames(open_source(media / "list.txt"))
    assert [Path(f.path).name for f in frames] == ["colour.jpg", "grey.png"] + ["clip.avi"] * 3
    assert "missing.jpg" in caplog.text


def test_video_frames_carry_index_and_fps(tmp_path: Path) -> None:
    src = open_source(write_video(tmp_path / "v.avi", n_frames=4, fps=12))
    frames = _frames(src)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[0].fps == pytest.approx(12) and frames[0].img.shape == (32, 48, 3)


def test_unreadable_single_video_raises_on_open(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(SourceError, match="cannot open video"):
        open_source(tmp_path / "bad.mp4")


def test_missing_sources(tmp_path: Path) -> None:
    for missing in (tmp_path / "nope.jpg", tmp_path / "nope", tmp_path / "cams.streams"):
        with pytest.raises(FileNotFoundError, match="not found"):
            open_source(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images or videos"):
        open_source(tmp_path / "empty")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(SourceError, match="lists no files"):
        open_source(tmp_path / "empty.txt")


def test_webcam_that_cannot_open(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_streams(monkeypatch, {})
    with pytest.raises(SourceError, match="cannot open webcam 0") as e:
        open_source("0")
    assert "\n" not in str(e.value)


def test_stream_url_reads_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "rtsp://127.0.0.1:8554/cam"
    _fake_streams(monkeypatch, {url: write_video(tmp_path / "v.avi", n_frames=3)})
    src = open_source(url)
    assert isinstance(src, CaptureSource) and src.live
    frames = _frames(src)
    assert [(f.path, f.index) for f in frames] == [(url, 0), (url, 1), (url, 2)]


def test_stream_that_cannot_open(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_streams(monkeypatch, {})
    with pytest.raises(SourceError, match="cannot open stream http://127.0.0.1:1/feed"):
        open_source("http://127.0.0.1:1/feed")


def test_stream_list_parsing_and_round_robin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = {"rtsp://a/1": write_video(tmp_path / "a.avi", 2), "http://b/2": write_video(tmp_path / "b.avi", 3)}
    _fake_streams(monkeypatch, urls)
    listing = tmp_path / "cams.txt"
    listing.write_text("# cameras\nrtsp://a/1\n\n  http://b/2  \n")
    assert read_stream_list(listing) == ["rtsp://a/1", "http://b/2"]
    frames = _frames(open_source(listing))
    assert [(f.path, f.index) for f in frames] == [
        ("rtsp://a/1", 0), ("http://b/2", 0), ("rtsp://a/1", 1), ("http://b/2", 1), ("http://b/2", 2)]
    (tmp_path / "mixed.streams").write_text("rtsp://a/1\n3\n")
    assert read_stream_list(tmp_path / "mixed.streams") == ["rtsp://a/1", 3]
    with pytest.raises(SourceError, match="cannot open webcam 3"):
        open_source(tmp_path / "mixed.streams")


def test_arrays_and_pil_images() -> None:
    grey = np.zeros((20, 30), np.uint8)
    bgra = np.zeros((20, 30, 4), np.uint8)
    pil = Image.new("RGB", (30, 20), (255, 0, 0))
    frames = _frames(as_source([grey, bgra, pil]))
    assert [f.path for f in frames] == ["image0", "image1", "image2"]
    assert all(f.img.shape == (20, 30, 3) and f.img.dtype == np.uint8 for f in frames)
    assert tuple(frames[2].img[0, 0]) == (0, 0, 255)  # PIL RGB red -> BGR
    assert isinstance(as_source(grey), ArraySource)
    with pytest.raises(TypeError):
        _frames(as_source([object()]))


def test_as_source_dispatch(media: Path) -> None:
    assert isinstance(as_source([media / "colour.jpg", str(media / "grey.png")]), FileSource)
    assert isinstance(as_source(str(media)), FileSource)
    with pytest.raises(SourceError, match="empty"):
        as_source([])


def test_expected_frames_for_a_progress_bar(tmp_path: Path) -> None:
    from tests.conftest import write_video
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    write_video(tmp_path / "b.avi", n_frames=4)
    assert open_source(tmp_path).expected_frames() == 1 + 4
    assert ArraySource([np.zeros((8, 8, 3), np.uint8)] * 3).expected_frames() == 3
    (tmp_path / "c.mp4").write_bytes(b"not a video")  # announces no frame count: unknown
    assert FileSource([tmp_path / "a.jpg", tmp_path / "c.mp4"]).expected_frames() is None
