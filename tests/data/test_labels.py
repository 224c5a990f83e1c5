"""Tests for utils/data/labels.py: label checks, bad-data reports, the label cache."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import utils.data.labels as labels_mod
from tests.conftest import make_dataset, write_sample
from utils.data.datasets import YoloDataset
from utils.data.labels import LabelError, check_sample, parse_label_file, scan_dataset


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
    with caplog.at_level(logging.INFO, logger="utils.data.labels"):
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


# --------------------------------------------------------------------------- cache
def _count_scans(monkeypatch) -> list[int]:
    calls = [0]
    original = labels_mod.check_sample

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(labels_mod, "check_sample", counting)
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

    monkeypatch.setattr(labels_mod.os, "replace", refuse_primary)
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
