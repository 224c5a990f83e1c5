"""Awkward image files in training and in detect's sources: EXIF orientation, CMYK, palettes,
1-pixel and 10000-pixel sides, multi-page TIFF, animated GIF (see utils/data/images.py)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from utils.data.datasets import YoloDataset
from utils.data.images import ImageReadError, read_image
from utils.data.sources import ArraySource, open_source
from utils.inference.transform import LetterboxTransform

RED_BGR = (0, 0, 255)
ORIENTATION = 0x0112
# EXIF orientation -> how to store an upright picture so that the tag turns it back upright
STORE = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
         4: lambda a: a[::-1], 5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, 1),
         7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, -1)}


def _upright() -> np.ndarray:
    """A 96x64 (h x w) RGB picture: grey, a red square near the top left, a blue bar at the bottom."""
    img = np.full((96, 64, 3), 128, np.uint8)
    img[8:32, 8:32] = (255, 0, 0)
    img[80:92, :] = (0, 0, 255)
    return img


RED_BOX = "0 0.3125 0.2083333 0.375 0.25\n"  # the red square, in the upright picture


def _save(path: Path, rgb: np.ndarray, orientation: int | None = None, **kwargs) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, exif=exif.tobytes(), **kwargs)
    return path


def _phone_photo(path: Path, orientation: int = 6) -> Path:
    """The upright picture stored sideways (as a phone does) with its EXIF orientation tag."""
    return _save(path, STORE[orientation](_upright()), orientation, quality=95)


def _assert_upright(bgr: np.ndarray) -> None:
    assert bgr.shape == (96, 64, 3)
    assert np.abs(bgr[12:28, 12:28].astype(int) - RED_BGR).max() < 40  # red square top left
    assert bgr[84:90, :, 0].mean() > 200 and bgr[84:90, :, 2].mean() < 60  # blue bar at the bottom


# --------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(tmp_path: Path, suffix: str,
                                                     orientation: int) -> None:
    extra = {".jpg": {"quality": 95}, ".webp": {"lossless": True}}.get(suffix, {})
    path = _save(tmp_path / f"o{orientation}{suffix}", STORE[orientation](_upright()), orientation,
                 **extra)
    with Image.open(path) as im:
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[..., ::-1]
    img = read_image(path)
    assert img.shape == reference.shape
    assert np.abs(img.astype(int) - reference).mean() < (3 if suffix == ".jpg" else 0.01)
    _assert_upright(img)


def test_rotated_photo_trains_upright_with_matching_labels(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    _phone_photo(tmp_path / "images" / "phone.jpg", orientation=6)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "phone.txt").write_text(RED_BOX)
    ds = YoloDataset(tmp_path / "images", img_size=96, cache_dir=tmp_path / "cache")
    assert ds.shapes.tolist() == [[96, 64]]  # (h, w) of the upright picture
    img, labels, _, _ = ds[0]
    rgb = img.permute(1, 2, 0).numpy()
    cx, cy, w, h = (labels[0, 2:].numpy() * 96).tolist()  # [batch, cls, cx, cy, w, h]
    box = rgb[int(cy - h / 2) + 2:int(cy + h / 2) - 2, int(cx - w / 2) + 2:int(cx + w / 2) - 2]
    assert box.size and np.abs(box.reshape(-1, 3).astype(int) - (255, 0, 0)).max() < 40


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_detect_sources_see_the_photo_upright(tmp_path: Path, orientation: int) -> None:
    path = _phone_photo(tmp_path / "phone.jpg", orientation)
    (frame,) = list(open_source(path))
    _assert_upright(frame.img)
    with Image.open(path) as im:  # the same photo handed to the API as a PIL image
        (from_pil,) = list(ArraySource([im]))
    _assert_upright(from_pil.img)


# --------------------------------------------------------------------------- colour modes
def _pil_reference(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))[..., ::-1]


@pytest.mark.parametrize("mode, suffix", [("CMYK", ".jpg"), ("P", ".png"), ("PA", ".png"),
                                          ("LA", ".png"), ("1", ".png"), ("I;16", ".png"),
                                          ("L", ".jpg"), ("RGBA", ".webp")])
def test_colour_modes_read_as_pil_sees_them(tmp_path: Path, mode: str, suffix: str) -> None:
    rgb = _upright()
    if mode == "I;16":
        im = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode in ("P", "PA"):
        im = Image.fromarray(rgb).convert("P")
    else:
        im = Image.fromarray(rgb).convert(mode)
    extra = {"transparency": 0} if mode == "PA" else {}
    path = tmp_path / f"{mode.replace(';', '')}{suffix}"
    im.save(path, **extra)
    img = read_image(path)
    assert img.shape == (96, 64, 3) and img.dtype == np.uint8
    # Pillow clips 16-bit grey to 255 when converting; the 8-bit value is the high byte
    reference = np.repeat(rgb[..., :1], 3, 2) if mode == "I;16" else _pil_reference(path)
    tolerance = 6 if suffix == ".jpg" else 1
    assert np.abs(img.astype(int) - reference).mean() < tolerance, mode


def test_cmyk_jpeg_keeps_its_colours(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(_upright()).convert("CMYK").save(path, quality=95)
    _assert_upright(read_image(path))
    _assert_upright(next(iter(open_source(path))).img)


# --------------------------------------------------------------------------- extreme sizes
SIDES = [(1, 1), (1, 10000), (10000, 1), (10000, 16), (16, 10000)]


@pytest.mark.parametrize("hw", SIDES, ids=[f"{h}x{w}" for h, w in SIDES])
def test_extreme_sides_train_and_detect_at_model_size(tmp_path: Path, hw: tuple[int, int]) -> None:
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "images" / "x.png"), np.full((*hw, 3), 200, np.uint8))
    (tmp_path / "labels" / "x.txt").write_text("0 0.5 0.5 1 1\n")
    assert read_image(tmp_path / "images" / "x.png").shape == (*hw, 3)
    ds = YoloDataset(tmp_path / "images", img_size=64, cache_dir=tmp_path / "cache")
    img, labels, _, _ = ds[0]
    assert tuple(img.shape) == (3, 64, 64) and ds.shapes.tolist() == [list(hw)]
    assert len(ds.labels[0]) == len(labels) == 1  # a box over the whole image is kept
    batch, _ = LetterboxTransform(64, 32).letterbox([read_image(tmp_path / "images" / "x.png")] * 2)
    assert batch.shape[:2] == (2, 3) and max(batch.shape[2:]) == 64  # never the 10000-pixel side


def test_big_side_batch_is_bounded_by_the_model_size(tmp_path: Path) -> None:
    """A tall and a wide 10000-pixel image in one batch: the batch is 64x64, not 10000x10000."""
    imgs = [np.zeros((10000, 16, 3), np.uint8), np.zeros((16, 10000, 3), np.uint8),
            np.zeros((1, 10000, 3), np.uint8)]
    batch, _ = LetterboxTransform(64, 32).letterbox(imgs)
    assert tuple(batch.shape) == (3, 3, 64, 64) and batch.element_size() * batch.nelement() < 1e5


# --------------------------------------------------------------------------- several frames
def _pages(colours: list[int], sizes: list[tuple[int, int]]) -> list[Image.Image]:
    return [Image.fromarray(np.full((*hw, 3), c, np.uint8)) for c, hw in zip(colours, sizes)]


def test_multi_page_tiff_gives_its_first_page(tmp_path: Path) -> None:
    pages = _pages([30, 120, 220], [(20, 30), (40, 50), (10, 10)])
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with Image.open(path) as im:
        assert im.n_frames == 3
    img = read_image(path)
    assert img.shape == (20, 30, 3) and (img == 30).all()
    frames = list(open_source(path))
    assert len(frames) == 1 and (frames[0].img == 30).all()


def test_animated_gif_first_frame_as_image_every_frame_as_source(tmp_path: Path) -> None:
    colours = [0, 90, 180, 250]
    pages = _pages(colours, [(24, 32)] * 4)
    path = tmp_path / "anim.gif"
    pages[0].save(path, save_all=True, append_images=pages[1:], duration=100, loop=0)
    img = read_image(path)
    assert img.shape == (24, 32, 3) and np.abs(img.astype(int) - colours[0]).max() <= 2
    frames = list(open_source(path))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [round(float(f.img.mean())) for f in frames] == pytest.approx(colours, abs=3)


def test_extreme_sides_through_mosaic_mixup_and_rect_batches(tmp_path: Path) -> None:
    """Training augmentation (mosaic, mixup, perspective, flips) and rectangular batches on a mix
    of 1-pixel and 10000-pixel sides: every item at the model size, every box inside it."""
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for h, w in [*SIDES, (5, 7)]:
        cv2.imwrite(str(tmp_path / "images" / f"{h}x{w}.png"), np.full((h, w, 3), 200, np.uint8))
        (tmp_path / "labels" / f"{h}x{w}.txt").write_text("0 0.5 0.5 1 1\n")
    hyp = {"mosaic": 1.0, "mixup": 0.5, "degrees": 10, "translate": 0.1, "scale": 0.5, "shear": 2,
           "perspective": 0.0005, "fliplr": 0.5, "flipud": 0.5}
    for rect in (False, True):
        ds = YoloDataset(tmp_path / "images", img_size=64, augment=not rect, hyp=hyp, rect=rect,
                         batch_size=2, cache_dir=tmp_path / "cache")
        for k in range(3 * len(ds)):
            img, labels, _, _ = ds[k % len(ds)]
            assert max(img.shape[1:]) == 64 and img.shape[0] == 3
            boxes = labels[:, 2:].numpy()
            assert np.isfinite(boxes).all() and (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()


# --------------------------------------------------------------------------- fuzzed image bytes
HEADERS = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP", b"BM"]


@pytest.fixture(scope="module")
def valid_jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", _upright()[..., ::-1])
    assert ok
    return buf.tobytes()


@settings(max_examples=100, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=2000),
       cut=st.floats(0, 1), flips=st.lists(st.integers(0, 10**6), max_size=8))
def test_fuzzed_image_bytes_decode_or_raise_image_read_error(
        tmp_path_factory: pytest.TempPathFactory, valid_jpeg: bytes, header: bytes, body: bytes,
        cut: float, flips: list[int]) -> None:
    """Random bytes behind real headers, and a real JPEG truncated and with bytes flipped:
    an upright-sized BGR image or ImageReadError, never another exception."""
    damaged = bytearray(valid_jpeg[:max(1, int(len(valid_jpeg) * cut))])
    for i in flips:
        damaged[i % len(damaged)] ^= 0x5A
    folder = tmp_path_factory.mktemp("bytes")
    for name, data in (("noise.jpg", header + body), ("damaged.jpg", bytes(damaged))):
        (folder / name).write_bytes(data)
        try:
            img = read_image(folder / name)
        except ImageReadError as e:
            assert name in str(e)
            continue
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
