"""Tests for utils/data/augment.py: letterbox geometry, perspective, mosaic, mixup, HSV, flips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from utils.boxes import scale_boxes
from utils.data.augment import (
    AugmentConfig,
    augment_hsv,
    box_candidates,
    flip_lr,
    flip_ud,
    letterbox,
    mixup,
    mosaic4,
    random_perspective,
)
from utils.data.config import load_hyp

REPO = Path(__file__).resolve().parents[2]
MARK = (0, 0, 255)  # pure red in BGR, never produced by the grey background


def _mask_box(img: np.ndarray) -> np.ndarray | None:
    """xyxy box (x2, y2 exclusive) around strongly red pixels, None if there are none."""
    red = (img[..., 2] > 150) & (img[..., 0] < 100) & (img[..., 1] < 100)
    ys, xs = np.nonzero(red)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def _marked_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.full((h, w, 3), 90, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = MARK
    return img


# --------------------------------------------------------------------------- letterbox
@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (333, 517), (100, 100), (1000, 200)])
@pytest.mark.parametrize("auto", [True, False])
def test_letterbox_shape_and_box_roundtrip(hw: tuple[int, int], auto: bool) -> None:
    h, w = hw
    box = (w // 4, h // 3, w // 4 + w // 3, h // 3 + h // 4)
    img, ratio, pad = letterbox(_marked_image(h, w, box), 320, auto=auto, stride=32)
    assert img.shape[0] % 32 == 0 and img.shape[1] % 32 == 0
    if not auto:
        assert img.shape[:2] == (320, 320)
    assert max(img.shape[:2]) == 320
    found = _mask_box(img)
    back = scale_boxes(img.shape[:2], found[None].copy(), (h, w), (ratio, pad))[0]
    tolerance = 1.0 + 1.0 / ratio[0]  # one output pixel of anti-aliasing, mapped back
    assert np.abs(back - np.array(box)).max() <= tolerance


def test_letterbox_options() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    out, ratio, pad = letterbox(img, 640, auto=False, scaleup=False)
    assert out.shape == (640, 640, 3) and ratio == (1.0, 1.0) and pad == (220.0, 270.0)
    out, ratio, pad = letterbox(img, (64, 96), scale_fill=True)
    assert out.shape == (64, 96, 3) and ratio == pytest.approx((0.64, 0.48)) and pad == (0, 0)
    out, ratio, pad = letterbox(img, 640, auto=True, stride=32)
    assert out.shape == (320, 640, 3) and pad == (0.0, 0.0)
    res = letterbox(img, 256, auto=False)
    assert res.img.shape == (256, 256, 3) and res.ratio == (1.28, 1.28)
    assert (res.img[:int(res.pad[1])] == 114).all()


# --------------------------------------------------------------------------- perspective
@pytest.mark.parametrize("seed", range(6))
def test_random_perspective_boxes_follow_pixels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 160, 200
    box = (60, 50, 120, 100)
    img = _marked_image(h, w, box)
    labels = np.array([[1, *box]], dtype=np.float32)
    out, out_labels = random_perspective(img, labels, degrees=30, translate=0.1, scale=0.3,
                                         shear=10, perspective=0.0005 * (seed % 2), rng=rng)
    assert out.shape == img.shape
    found = _mask_box(out)
    if len(out_labels) == 0:  # filtered: the mark must be (nearly) gone or sliver-like
        return
    assert out_labels[0, 0] == 1
    x1, y1, x2, y2 = out_labels[0, 1:]
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert found is not None
    # the label covers every marked pixel (1 px slack for interpolation) ...
    assert found[0] >= x1 - 1 and found[1] >= y1 - 1 and found[2] <= x2 + 1 and found[3] <= y2 + 1
    # ... and is tight: the marked pixels reach the label's sides
    assert np.abs(found - out_labels[0, 1:]).max() <= 2.5


def test_random_perspective_identity_and_border() -> None:
    img = _marked_image(64, 64, (10, 10, 30, 30))
    labels = np.array([[0, 10, 10, 30, 30]], np.float32)
    out, out_labels = random_perspective(img, labels, rng=np.random.default_rng(0))
    assert np.array_equal(out, img) and np.allclose(out_labels, labels)
    out, out_labels = random_perspective(img, labels, border=(-16, -16),
                                         rng=np.random.default_rng(0))
    assert out.shape == (32, 32, 3)  # centre crop of the canvas
    assert np.allclose(out_labels[0, 1:], [0, 0, 14, 14])


def test_box_candidates_filter() -> None:
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 4]], float)
    after = np.array([[0, 0, 9, 9], [0, 0, 1.5, 9], [0, 0, 3, 3], [0, 0, 100, 4]], float)
    assert box_candidates(before, after).tolist() == [True, False, False, False]


# --------------------------------------------------------------------------- mosaic / mixup
def _solid(colour: tuple[int, int, int], hw: tuple[int, int]) -> np.ndarray:
    return np.full((*hw, 3), colour, np.uint8)


def test_mosaic4_tiles_and_labels() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    sizes = [(64, 48), (48, 64), (64, 64), (40, 64)]
    images = [_solid(c, s) for c, s in zip(colours, sizes)]
    labels = [np.array([[k, 0.5, 0.5, 0.5, 0.5]], np.float32) for k in range(4)]
    for seed in range(5):
        canvas, out = mosaic4(images, labels, 64, np.random.default_rng(seed))
        assert canvas.shape == (128, 128, 3) and out.shape == (4, 5)
        assert (out[:, 1:] >= 0).all() and (out[:, 1:] <= 128).all()
        for cls, x1, y1, x2, y2 in out:
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue  # the tile was cropped away
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            assert tuple(canvas[cy, cx]) == colours[int(cls)]
            h, w = sizes[int(cls)]
            assert x2 - x1 <= w / 2 + 1e-3 and y2 - y1 <= h / 2 + 1e-3


def test_mosaic_then_perspective_gives_valid_labels() -> None:
    rng = np.random.default_rng(1)
    images = [_solid((30 * k, 80, 200), (64, 64)) for k in range(4)]
    labels = [np.array([[k, 0.3, 0.4, 0.3, 0.2], [k, 0.7, 0.7, 0.2, 0.3]], np.float32)
              for k in range(4)]
    hyp = load_hyp(REPO / "data" / "hyp.scratch.p5.yaml")
    for _ in range(5):
        canvas, pix = mosaic4(images, labels, 64, rng)
        out, pix = random_perspective(canvas, pix, hyp["degrees"], hyp["translate"],
                                      hyp["scale"], hyp["shear"], hyp["perspective"],
                                      border=(-32, -32), rng=rng)
        assert out.shape == (64, 64, 3)
        assert (pix[:, 1:] >= 0).all() and (pix[:, [1, 3]] <= 64).all()
        assert (pix[:, 3] > pix[:, 1] + 2).all() and (pix[:, 4] > pix[:, 2] + 2).all()
        assert set(pix[:, 0].astype(int).tolist()) <= {0, 1, 2, 3}


def test_mixup() -> None:
    a, b = _solid((0, 0, 0), (32, 32)), _solid((200, 200, 200), (32, 32))
    la, lb = np.array([[0, 1, 1, 5, 5]], np.float32), np.array([[1, 2, 2, 9, 9]], np.float32)
    img, labels = mixup(a, la, b, lb, np.random.default_rng(0))
    assert img.dtype == np.uint8 and img.shape == a.shape
    assert 60 < img.mean() < 140  # Beta(32, 32) weight is close to 0.5
    assert labels.tolist() == [la[0].tolist(), lb[0].tolist()]
    with pytest.raises(ValueError):
        mixup(a, la, _solid((0, 0, 0), (16, 32)), lb, np.random.default_rng(0))


# --------------------------------------------------------------------------- photometric, flips
def test_augment_hsv() -> None:
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    same = img.copy()
    augment_hsv(same, 0, 0, 0, np.random.default_rng(0))
    assert np.array_equal(same, img)
    a, b = img.copy(), img.copy()
    augment_hsv(a, 0.015, 0.7, 0.4, np.random.default_rng(5))
    augment_hsv(b, 0.015, 0.7, 0.4, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, img) and a.dtype == np.uint8


def test_flips() -> None:
    img = _marked_image(20, 40, (0, 0, 10, 5))
    labels = np.array([[0, 0.125, 0.125, 0.25, 0.25]], np.float32)
    img_lr, lab_lr = flip_lr(img, labels)
    assert lab_lr[0].tolist() == pytest.approx([0, 0.875, 0.125, 0.25, 0.25])
    assert _mask_box(img_lr).tolist() == [30, 0, 40, 5]
    img_ud, lab_ud = flip_ud(img, labels)
    assert lab_ud[0].tolist() == pytest.approx([0, 0.125, 0.875, 0.25, 0.25])
    assert _mask_box(img_ud).tolist() == [0, 15, 10, 20]
    assert labels[0, 1] == pytest.approx(0.125)  # input untouched
    back, _ = flip_lr(*flip_lr(img, labels))
    assert np.array_equal(back, img)


def test_augment_config_from_hyp() -> None:
    assert AugmentConfig.from_hyp(None) == AugmentConfig()
    cfg = AugmentConfig.from_hyp({"mosaic": 1, "fliplr": 0.5, "lr0": 0.01})
    assert cfg.mosaic == 1.0 and cfg.fliplr == 0.5 and cfg.mixup == 0.0
