"""Tests for utils/datasets.py: image reading, label checks, cache, dataset items, loaders."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import utils.datasets as ds_mod
from utils.boxes import scale_boxes, xywhn2xyxy
from utils.data_config import load_hyp
from utils.datasets import (LabelError, ImageReadError, YoloDataset, check_sample, collate_fn,
                            create_dataloader, parse_label_file, read_image, rect_batch_shapes,
                            scan_dataset)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def write_sample(root: Path, name: str, hw: tuple[int, int] = (48, 64),
                 labels: str | None = "0 0.5 0.5 0.25 0.25\n", colour=(0, 160, 0)) -> Path:
    """A solid image with a filled box for each label line (if the line is valid)."""
    img_path = root / "images" / f"{name}.jpg"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((*hw, 3), 60, np.uint8)
    if labels is not None:
        lbl = root / "labels" / f"{name}.txt"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        lbl.write_text(labels)
        for line in labels.splitlines():
            try:
                _, cx, cy, w, h = map(float, line.split())
            except ValueError:
                continue
            x1, y1 = int((cx - w / 2) * hw[1]), int((cy - h / 2) * hw[0])
            x2, y2 = int((cx + w / 2) * hw[1]), int((cy + h / 2) * hw[0])
            cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), colour, -1)
    cv2.imwrite(str(img_path), img)
    return img_path


def make_dataset(root: Path, n: int = 6, nc: int = 3) -> Path:
    """``n`` images of various aspect ratios with 1-3 boxes each; returns the images folder."""
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (64, 48), (64, 64), (40, 80), (80, 40), (56, 72)]
    for i in range(n):
        lines = []
        for _ in range(1 + i % 3):
            cx, cy = rng.uniform(0.3, 0.7, 2)
            w, h = rng.uniform(0.15, 0.35, 2)
            lines.append(f"{int(rng.integers(0, nc))} {cx:.4f} {cy:.4f} {w:.4f} {h:.4f}")
        write_sample(root, f"im{i}", sizes[i % len(sizes)], "\n".join(lines) + "\n")
    return root / "images"


# --------------------------------------------------------------------------- image reading
def test_read_image_converts_formats(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (10, 1))
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7  # blue channel (BGR order), alpha
    g16 = np.full((10, 12), 65535, np.uint16)
    c16 = np.zeros((10, 12, 3), np.uint16)
    c16[..., 2] = 257 * 100  # red
    for name, arr in {"g.png": gray, "rgba.png": rgba, "g16.png": g16, "c16.png": c16}.items():
        cv2.imwrite(str(tmp_path / name), arr)
    for name in ("g.png", "rgba.png", "g16.png", "c16.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (10, 12, 3) and img.dtype == np.uint8, name
    assert (read_image(tmp_path / "g.png")[..., 1] == gray).all()
    assert read_image(tmp_path / "rgba.png")[0, 0].tolist() == [200, 0, 0]
    assert (read_image(tmp_path / "g16.png") == 255).all()
    assert read_image(tmp_path / "c16.png")[0, 0].tolist() == [0, 0, 100]


def test_read_image_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg" * 5)
    for name in ("empty.jpg", "bad.jpg", "missing.jpg"):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)


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


# --------------------------------------------------------------------------- label checks
def test_bad_data_is_skipped_fixed_and_reported(tmp_path: Path, caplog) -> None:
    write_sample(tmp_path, "good")
    write_sample(tmp_path, "nolabel", labels=None)
    write_sample(tmp_path, "emptylabel", labels="")
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"\x00garbage" * 20)
    (tmp_path / "images" / "zero.jpg").write_bytes(b"")
    write_sample(tmp_path, "messy", labels="\n".join([
        "0 0.5 0.5 0.2 0.2",           # 1 ok
        "1 0.5 0.5",                   # 2 wrong column count
        "1 0.5 abc 0.2 0.2",           # 3 non-numeric
        "2 0.95 0.5 0.2 0.2",          # 4 slightly outside -> clipped
        "2 1.5 1.5 0.2 0.2",           # 5 fully outside -> degenerate
        "0 0.5 0.5 0.2 0.2",           # 6 duplicate of line 1
        "1 0.3 0.3 0.0 0.1",           # 7 zero width -> degenerate
        "1.5 0.3 0.3 0.1 0.1",         # 8 fractional class -> malformed
        "1 0.2 0.2 0.4 0.2 0.4 0.4",   # 9 polygon -> bounding box
    ]) + "\n")
    with caplog.at_level(logging.INFO, logger="utils.datasets"):
        samples, report = scan_dataset(sorted((tmp_path / "images").iterdir()), nc=3,
                                       use_cache=False)
    assert report.n_images == 6 and report.n_usable == 4 and len(samples) == 4
    assert report.n_backgrounds == 2
    counts = report.counts()
    assert counts == {"corrupt_image": 1, "empty_image": 1, "missing_label": 1,
                      "malformed_line": 3, "clipped": 1, "degenerate": 2, "duplicate": 1}
    lines = {(i.kind, i.line) for i in report.issues if i.file.endswith("messy.txt")}
    assert lines == {("malformed_line", 2), ("malformed_line", 3), ("clipped", 4),
                     ("degenerate", 5), ("duplicate", 6), ("degenerate", 7),
                     ("malformed_line", 8)}
    messy = next(s for s in samples if s.im_file.endswith("messy.jpg"))
    assert len(messy.labels) == 3
    assert messy.labels[1].tolist() == pytest.approx([2, 0.925, 0.5, 0.15, 0.2])
    assert messy.labels[2].tolist() == pytest.approx([1, 0.3, 0.3, 0.2, 0.2])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # ONE summary
    text = warnings[0].getMessage()
    for needle in ("corrupt.jpg", "zero.jpg", "nolabel.txt", "messy.txt:2", "messy.txt:6",
                   "image skipped", "duplicate dropped", "box clipped"):
        assert needle in text


@pytest.mark.parametrize("line", ["3 0.5 0.5 0.1 0.1", "-1 0.5 0.5 0.1 0.1"])
def test_class_out_of_range_is_an_error(tmp_path: Path, line: str) -> None:
    write_sample(tmp_path, "a", labels=f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(LabelError, match=r"a\.txt:2: class id -?\d+"):
        scan_dataset([tmp_path / "images" / "a.jpg"], nc=3, use_cache=False)


def test_parse_label_file_pixel_degenerate(tmp_path: Path) -> None:
    f = tmp_path / "l.txt"
    f.write_text("0 0.5 0.5 0.001 0.5\n0 0.5 0.5 0.5 0.5\n")
    labels, issues = parse_label_file(f, (100, 100), nc=1)
    assert len(labels) == 1 and [i.kind for i in issues] == ["degenerate"]


def test_check_sample_missing_image(tmp_path: Path) -> None:
    s = check_sample(tmp_path / "images" / "x.jpg", tmp_path / "labels" / "x.txt")
    assert s.shape is None and s.issues[0].kind == "missing_image"


# --------------------------------------------------------------------------- cache
def _count_scans(monkeypatch) -> list[int]:
    calls = [0]
    original = ds_mod.check_sample

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(ds_mod, "check_sample", counting)
    return calls


def test_cache_reuse_and_invalidation(tmp_path: Path, monkeypatch) -> None:
    images = make_dataset(tmp_path, n=4)
    calls = _count_scans(monkeypatch)
    ds1 = YoloDataset(images, img_size=64, stride=32)
    cache = tmp_path / "labels.cache"
    assert cache.is_file() and calls[0] == 4
    with np.load(cache, allow_pickle=False) as data:  # plain arrays only, no pickle
        assert set(data.files) == {"meta", "shapes", "counts", "labels"}
    ds2 = YoloDataset(images, img_size=64, stride=32)
    assert calls[0] == 4  # reused
    assert all(np.array_equal(a, b) for a, b in zip(ds1.labels, ds2.labels))
    assert ds2.report.n_boxes == ds1.report.n_boxes

    label = tmp_path / "labels" / "im0.txt"
    label.write_text("2 0.5 0.5 0.5 0.5\n")  # modified content
    ds3 = YoloDataset(images, img_size=64, stride=32)
    assert calls[0] == 8
    assert ds3.labels[ds3.im_files.index(str(images / "im0.jpg"))].tolist() == [[2, .5, .5, .5, .5]]

    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch
    YoloDataset(images, img_size=64, stride=32)
    assert calls[0] == 12

    (tmp_path / "labels" / "im1.txt").unlink()  # a label disappears
    ds5 = YoloDataset(images, img_size=64, stride=32)
    assert calls[0] == 16 and ds5.report.counts() == {"missing_label": 1}


def test_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch, caplog) -> None:
    images = make_dataset(tmp_path, n=2)
    YoloDataset(images, img_size=64, stride=32)
    (tmp_path / "labels.cache").write_bytes(b"not an npz")
    calls = _count_scans(monkeypatch)
    with caplog.at_level(logging.WARNING):
        YoloDataset(images, img_size=64, stride=32)
    assert calls[0] == 2 and "label cache" in caplog.text


def test_cache_falls_back_to_cache_dir(tmp_path: Path, monkeypatch) -> None:
    images = make_dataset(tmp_path / "ds", n=2)
    primary = tmp_path / "ds" / "labels.cache"
    real_replace = os.replace

    def refuse_primary(src, dst):
        if Path(dst) == primary:
            raise PermissionError(f"read-only: {dst}")
        return real_replace(src, dst)

    monkeypatch.setattr(ds_mod.os, "replace", refuse_primary)
    cache_dir = tmp_path / "cache"
    YoloDataset(images, img_size=64, stride=32, cache_dir=cache_dir)
    assert not primary.exists() and len(list(cache_dir.glob("*.cache"))) == 1
    assert not list((tmp_path / "ds").glob("*.tmp"))
    calls = _count_scans(monkeypatch)
    YoloDataset(images, img_size=64, stride=32, cache_dir=cache_dir)
    assert calls[0] == 0


def test_class_check_applies_to_cached_labels(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", labels="0 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.2 0.2\n")
    YoloDataset(tmp_path / "images", img_size=64, stride=32)  # cached without nc
    with pytest.raises(LabelError, match=r"a\.txt:2"):
        YoloDataset(tmp_path / "images", img_size=64, stride=32, nc=2)


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


def test_txt_list_with_missing_entry_and_unreadable_label(tmp_path: Path) -> None:
    write_sample(tmp_path, "ok")
    write_sample(tmp_path, "dirlabel", labels=None)
    (tmp_path / "labels" / "dirlabel.txt").mkdir()  # exists but cannot be read as a file
    listing = tmp_path / "list.txt"
    listing.write_text("images/ok.jpg\nimages/gone.jpg\nimages/dirlabel.jpg\n")
    ds = YoloDataset(listing, img_size=64, stride=32)
    assert len(ds) == 1 and ds.report.counts() == {"missing_image": 1, "unreadable_label": 1}
    assert ds.report.by_kind("missing_image")[0].file.endswith("gone.jpg")
    assert list(tmp_path.glob("labels-*.cache"))  # list sources get their own cache name
