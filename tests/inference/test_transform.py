"""Tests for utils/inference/transform.py: the batch letterbox, normalisation and the way back."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from utils.data.augment import PAD_VALUE, letterbox
from utils.data.sources import Frame
from utils.inference.transform import LetterboxTransform

SHAPES = {"tall": (90, 30), "wide": (50, 100), "square": (40, 40), "one_row": (1, 200)}


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_batch(imgs: list[np.ndarray], img_size: int, stride: int,
                     shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, list]:
    """The batch letterbox as detect.py has always done it: each image scaled to ``img_size`` on
    its long side, the batch padded to the smallest stride multiple holding them all (or a fixed
    ``shape``), each image letterboxed into it, BGR HWC -> RGB CHW."""
    if shape is None:
        fitted = [(max(1, round(h * img_size / max(h, w))), max(1, round(w * img_size / max(h, w))))
                  for h, w in (im.shape[:2] for im in imgs)]
        shape = tuple(math.ceil(max(f[k] for f in fitted) / stride) * stride for k in (0, 1))
    out, infos = [], []
    for im in imgs:
        lb = letterbox(im, shape, auto=False, stride=stride)
        out.append(np.ascontiguousarray(lb.img[..., ::-1].transpose(2, 0, 1)))
        infos.append((im.shape[:2], (lb.ratio, lb.pad)))
    return torch.from_numpy(np.stack(out)), infos


@pytest.mark.parametrize(("name", "img_size", "hw"), [
    ("tall", 64, (64, 32)), ("wide", 64, (32, 64)), ("square", 64, (64, 64)), ("one_row", 64, (32, 64)),
    ("tall", 96, (96, 32)), ("one_row", 96, (32, 96)),
])
def test_single_image_matches_the_reference(name: str, img_size: int, hw: tuple[int, int]) -> None:
    img = _image(*SHAPES[name])
    imgs, infos = LetterboxTransform(img_size, 32).batch([img])
    ref, ref_infos = _reference_batch([img], img_size, 32)
    assert imgs.dtype == torch.uint8 and tuple(imgs.shape) == (1, 3, *hw)
    assert torch.equal(imgs, ref) and infos == ref_infos


def test_mixed_batch_matches_the_reference() -> None:
    imgs_bgr = [_image(*hw, seed=k) for k, hw in enumerate(SHAPES.values())]
    imgs, infos = LetterboxTransform(64, 32).batch(imgs_bgr)
    ref, ref_infos = _reference_batch(imgs_bgr, 64, 32)
    assert tuple(imgs.shape) == (4, 3, 64, 64)
    assert torch.equal(imgs, ref) and infos == ref_infos


def test_content_is_the_resized_image_in_rgb_surrounded_by_padding() -> None:
    img = _image(50, 100)
    imgs, infos = LetterboxTransform(64, 32).batch([img])
    (h0, w0), ((r, _), (pw, ph)) = infos[0]
    assert (h0, w0) == (50, 100) and r == 0.64 and (pw, ph) == (0.0, 0.0)
    expected = cv2.resize(img, (64, 32), interpolation=cv2.INTER_LINEAR)[..., ::-1].transpose(2, 0, 1)
    assert torch.equal(imgs[0], torch.from_numpy(np.ascontiguousarray(expected)))
    imgs, infos = LetterboxTransform(64, 32).batch([img, _image(90, 30)])  # now padded to 64x64
    assert infos[0][1][1] == (0.0, 16.0)
    assert (imgs[0, :, :16] == PAD_VALUE).all() and (imgs[0, :, 48:] == PAD_VALUE).all()


def test_fixed_export_shape() -> None:
    """Exports with one input size: every image is fitted into that (h, w), whatever img_size."""
    imgs_bgr = [_image(*hw, seed=k) for k, hw in enumerate(SHAPES.values())]
    transform = LetterboxTransform(96, 32, shape=(96, 64))
    imgs, infos = transform.batch(imgs_bgr)
    ref, ref_infos = _reference_batch(imgs_bgr, 96, 32, shape=(96, 64))
    assert tuple(imgs.shape) == (4, 3, 96, 64)
    assert torch.equal(imgs, ref) and infos == ref_infos
    assert infos[1] == ((50, 100), ((0.64, 0.64), (0.0, 32.0)))


def test_batches_group_frames_with_the_same_letterbox() -> None:
    frames = [Frame(_image(*hw, seed=k), f"image{k}") for k, hw in enumerate(SHAPES.values())]
    transform = LetterboxTransform(64, 32)
    batches = list(transform.batches(frames, 3))
    assert [len(b.frames) for b in batches] == [3, 1]
    imgs, infos = transform.batch([f.img for f in frames[:3]])
    assert torch.equal(batches[0].imgs, imgs) and batches[0].ratio_pads == [rp for _, rp in infos]


def test_normalize_dtype_range_and_values() -> None:
    imgs = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    x = LetterboxTransform.normalize(imgs, "cpu")
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    torch.testing.assert_close(x, imgs.float() / 255.0, atol=0, rtol=0)
    assert LetterboxTransform.normalize(imgs, torch.device("cpu"), half=True).dtype == torch.float16


def test_normalize_leaves_float_inputs_in_their_range() -> None:
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(LetterboxTransform.normalize(x, "cpu"), x, atol=0, rtol=0)


def _red_box(chw: torch.Tensor) -> torch.Tensor:
    """xyxy box (x2, y2 exclusive) around pixels more than half red in an RGB (3, H, W) image."""
    red = (chw[0] > 127) & (chw[1] < 128) & (chw[2] < 128)
    ys, xs = torch.nonzero(red, as_tuple=True)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)


@pytest.mark.parametrize(("hw", "box", "img_size", "shape"), [
    ((90, 30), (5, 20, 25, 70), 128, None),  # tall
    ((50, 100), (10, 5, 60, 40), 128, None),  # wide
    ((40, 40), (8, 8, 32, 24), 64, None),  # square
    ((1, 200), (50, 0, 150, 1), 256, None),  # one row
    ((50, 100), (10, 5, 60, 40), 128, (160, 128)),  # fixed export shape
    ((90, 30), (5, 20, 25, 70), 64, None),  # shrunk
    ((300, 120), (20, 100, 100, 250), 64, None),  # shrunk a lot
])
def test_box_round_trip(hw: tuple[int, int], box: tuple[int, ...], img_size: int,
                        shape: tuple[int, int] | None) -> None:
    """A box drawn on the original, found in the letterboxed batch and mapped back, is the box
    to within 1 original pixel, or 1 network-input pixel where the image was shrunk."""
    img = np.zeros((*hw, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = (0, 0, 255)  # red in BGR
    imgs, infos = LetterboxTransform(img_size, 32, shape).batch([img, _image(64, 16)])  # a second shape pads
    back = LetterboxTransform.to_original(_red_box(imgs[0]), imgs.shape[2:], infos[0])
    ratio = infos[0][1][0][0]
    torch.testing.assert_close(back, torch.tensor([box], dtype=torch.float32), atol=max(1.0, 1 / ratio), rtol=0)


def test_to_original_copies_and_passes_unletterboxed_boxes_through() -> None:
    boxes = torch.tensor([[16.0, 8.0, 48.0, 24.0]])
    info = ((50, 100), ((0.64, 0.64), (0.0, 16.0)))
    back = LetterboxTransform.to_original(boxes, (64, 64), info)
    torch.testing.assert_close(back, torch.tensor([[25.0, -12.5, 75.0, 12.5]]).clamp(min=0))
    assert boxes.tolist() == [[16.0, 8.0, 48.0, 24.0]]  # the input is left alone
    same = LetterboxTransform.to_original(boxes, (64, 64), None)
    assert same is not boxes and torch.equal(same, boxes)


def test_letterbox_shapes_and_inverse_mapping() -> None:
    wide, tall = np.zeros((50, 100, 3), np.uint8), np.zeros((90, 30, 3), np.uint8)
    imgs, ratio_pads = LetterboxTransform(64, 32).letterbox([wide, tall])
    assert imgs.dtype == torch.uint8 and tuple(imgs.shape) == (2, 3, 64, 64)
    box = torch.tensor([[0.0, 16.0, 64.0, 48.0]])  # the wide image's content area
    back = LetterboxTransform.to_original(box, (64, 64), (wide.shape[:2], ratio_pads[0]))
    assert back[0].tolist() == pytest.approx([0.0, 0.0, 100.0, 50.0], abs=0.6)
    imgs, _ = LetterboxTransform(64, 32).letterbox([wide, wide])
    assert tuple(imgs.shape) == (2, 3, 32, 64)  # no padding beyond what the batch needs


def test_letterbox_is_rgb() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    imgs, _ = LetterboxTransform(32, 32).letterbox([img])
    assert imgs[0, 0].min() == 255 and imgs[0, 2].max() == 0


def test_batches_sizes() -> None:
    frames = [Frame(np.zeros((20, 40, 3), np.uint8), f"image{i}") for i in range(5)]
    batches = list(LetterboxTransform(64, 32).batches(frames, 2))
    assert [len(b.frames) for b in batches] == [2, 2, 1]
    assert tuple(batches[0].imgs.shape) == (2, 3, 32, 64)
    with pytest.raises(ValueError, match="batch size"):
        list(LetterboxTransform(64, 32).batches(frames, 0))


def test_letterbox_into_a_fixed_shape() -> None:
    """Exports with one input size: every image is fitted into that (h, w)."""
    imgs, ratio_pads = LetterboxTransform(64, 32, shape=(96, 64)).letterbox([np.zeros((50, 100, 3), np.uint8)])
    assert tuple(imgs.shape) == (1, 3, 96, 64)
    assert ratio_pads[0] == ((0.64, 0.64), (0.0, 32.0))
