"""Tests for utils/data/datasets.py: dataset items, rectangular batches, collate, loaders."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, make_dataset, write_sample
from utils.boxes import scale_boxes, xywhn2xyxy
from utils.data.config import load_hyp
from utils.data.datasets import YoloDataset, collate_fn, create_dataloader, rect_batch_shapes


# --------------------------------------------------------------------------- dataset items
def test_dataset_items_are_rgb_chw(tmp_path: Path) -> None:
    write_sample(tmp_path, "blue", (32, 32), "0 0.5 0.5 1 1\n", colour=(255, 0, 0))  # BGR blue
    ds = YoloDataset(tmp_path / "images", img_size=32, stride=32)
    img, labels, path, shapes = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert img[2].float().mean() > 240 and img[0].float().mean() < 15  # RGB: blue last
    assert labels.shape == (1, 6) and labels[0, 0] == 0
    assert path.endswith("blue.jpg") and shapes[0] == (32, 32)


def test_dataset_shapes_orders(tmp_path: Path) -> None:
    write_sample(tmp_path, "wide", (20, 50))
    ds = YoloDataset(tmp_path / "images", img_size=64, stride=32)
    assert ds.shapes.tolist() == [[20, 50]] and ds.shapes_wh.tolist() == [[50, 20]]



# --------------------------------------------------------------------------- geometry
def test_rect_batch_shapes() -> None:
    shapes = np.array([[100, 200], [200, 100], [150, 150], [90, 200], [300, 100], [120, 200]])
    order, batch_shapes, batch_index = rect_batch_shapes(shapes, 2, 128, 32, pad=0.5)
    aspect = shapes[order, 0] / shapes[order, 1]
    assert (np.diff(aspect) >= 0).all()
    assert batch_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert (batch_shapes % 32 == 0).all()
    assert batch_shapes[0].tolist() == [96, 160]  # landscape: h < w (ceil(0.5 * 4 + 0.5) = 3)
    assert batch_shapes[1].tolist() == [160, 160]  # mixed batch: square
    assert batch_shapes[2][0] > batch_shapes[2][1]  # portrait


def test_letterboxed_labels_map_back_to_original(tmp_path: Path) -> None:
    images = make_dataset(tmp_path, n=6)
    for rect in (False, True):
        ds = YoloDataset(images, img_size=96, batch_size=2, rect=rect, stride=32, pad=0.5)
        for i in range(len(ds)):
            img, labels, path, ((h0, w0), ratio_pad) = ds[i]
            h, w = img.shape[1:]
            assert h % 32 == 0 and w % 32 == 0
            boxes = xywhn2xyxy(labels[:, 2:].numpy().copy(), w, h)
            back = scale_boxes((h, w), boxes, (h0, w0), ratio_pad)
            expected = xywhn2xyxy(ds.labels[i][:, 1:].copy(), w0, h0)
            assert np.abs(back - expected).max() < 1.0


def test_rect_loader_batches_share_shapes(tmp_path: Path) -> None:
    images = make_dataset(tmp_path, n=6)
    loader, ds = create_dataloader(images, 96, 2, 32, rect=True, pad=0.5, workers=0)
    shapes = [tuple(imgs.shape[2:]) for imgs, *_ in loader]
    assert shapes == [tuple(s) for s in ds.batch_shapes]


# --------------------------------------------------------------------------- batching
def test_collate_sets_batch_index_and_pads() -> None:
    labels_a = torch.tensor([[0, 1, .5, .5, .5, .5]])
    labels_b = torch.tensor([[0, 2, .5, .5, .2, .2], [0, 0, .1, .1, .1, .1]])
    a = (torch.zeros(3, 32, 64, dtype=torch.uint8), labels_a, "a", None)
    b = (torch.zeros(3, 64, 32, dtype=torch.uint8), labels_b, "b", None)
    imgs, labels, paths, shapes = collate_fn([a, b])
    assert imgs.shape == (2, 3, 64, 64) and paths == ("a", "b")
    assert labels[:, 0].tolist() == [0, 1, 1]
    assert labels[0, 2:].tolist() == pytest.approx([0.5, 0.25, 0.5, 0.25])
    assert labels[1, 2:].tolist() == pytest.approx([0.25, 0.5, 0.1, 0.2])
    assert (imgs[0, :, 32:] == 114).all() and (imgs[0, :, :32] == 0).all()


def _batches(loader, n: int = 2) -> list:
    out = []
    for i, batch in enumerate(loader):
        if i == n:
            break
        out.append(batch)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_end_to_end(tmp_path: Path, workers: int) -> None:
    images = make_dataset(tmp_path, n=6)
    hyp = load_hyp(REPO / "data" / "hyp.scratch.p5.yaml")
    kwargs = dict(hyp=hyp, augment=True, workers=workers, shuffle=True, seed=3, nc=3)
    loader, ds = create_dataloader(images, 64, 4, 32, **kwargs)
    batches = _batches(loader)
    assert len(loader) == 2
    for imgs, labels, paths, shapes in batches:
        assert imgs.dtype == torch.uint8 and imgs.shape[1:] == (3, 64, 64)
        assert labels.shape[1] == 6 and len(paths) == imgs.shape[0]
        assert ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all()
        assert (labels[:, 1] < 3).all() and (labels[:, 4:] > 0).all()
        assert set(labels[:, 0].long().tolist()) <= set(range(imgs.shape[0]))
    again = _batches(create_dataloader(images, 64, 4, 32, **kwargs)[0])
    for (i1, l1, p1, _), (i2, l2, p2, _) in zip(batches, again):  # deterministic given a seed
        assert p1 == p2 and torch.equal(i1, i2) and torch.equal(l1, l2)


def test_dataloader_ram_cache_and_distributed(tmp_path: Path) -> None:
    images = make_dataset(tmp_path, n=5)
    plain, ds = create_dataloader(images, 64, 2, 32, workers=0)
    cached, ds_cached = create_dataloader(images, 64, 2, 32, workers=0, cache_images="ram")
    assert all(im is not None for im in ds_cached.imgs)
    for (a, la, *_), (b, lb, *_) in zip(plain, cached):
        assert torch.equal(a, b) and torch.equal(la, lb)
    loader, _ = create_dataloader(images, 64, 2, 32, workers=0, rank=1, world_size=2)
    assert len(loader.sampler) == math.ceil(5 / 2)
    with pytest.raises(ValueError, match="multiple of the stride"):
        create_dataloader(images, 65, 2, 32)


def test_dataset_survives_image_deleted_after_scan(tmp_path: Path, caplog) -> None:
    images = make_dataset(tmp_path, n=3)
    ds = YoloDataset(images, img_size=64, stride=32)
    Path(ds.im_files[0]).unlink()
    with caplog.at_level(logging.WARNING):
        img, labels, path, _ = ds[0]
    assert path == ds.im_files[1] and "another image" in caplog.text
