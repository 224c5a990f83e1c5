"""Training-image records: the bottom-k sketch estimates how much of another set was trained on."""
from __future__ import annotations

from pathlib import Path

import pytest

from utils.data.image_set import image_key, image_set_record, merge_records, overlap_share


def _files(folder: Path, n: int, prefix: str, size: int = 10) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{prefix}{i:05d}.jpg"
        p.write_bytes(bytes(size + i % 7))
        out.append(p)
    return out


def test_key_is_the_name_and_size_not_the_folder(tmp_path: Path) -> None:
    a, = _files(tmp_path / "a", 1, "x")
    b, = _files(tmp_path / "b", 1, "x")
    c, = _files(tmp_path / "c", 1, "x", size=99)
    assert image_key(a) == image_key(b) != image_key(c)


def test_small_sets_are_exact(tmp_path: Path) -> None:
    trained = _files(tmp_path / "t", 50, "img")
    other = _files(tmp_path / "o", 30, "new")
    record = image_set_record(trained)
    assert record["n"] == 50 and len(record["sketch"]) == 50
    assert overlap_share(record, trained) == 1.0
    assert overlap_share(record, other) == 0.0
    assert overlap_share(record, trained[:10] + other) == pytest.approx(10 / 40)


def test_large_sets_are_estimated(tmp_path: Path) -> None:
    trained = _files(tmp_path / "t", 3000, "img")
    other = _files(tmp_path / "o", 3000, "new")
    record = image_set_record(trained, k=500)
    assert record["n"] == 3000 and len(record["sketch"]) == 500
    assert overlap_share(record, trained) == 1.0
    assert overlap_share(record, other) == 0.0
    assert overlap_share(record, trained[:1500] + other[:1500]) == pytest.approx(0.5, abs=0.1)


def test_merge_covers_both_sets(tmp_path: Path) -> None:
    a, b = _files(tmp_path / "a", 40, "a"), _files(tmp_path / "b", 60, "b")
    merged = merge_records(image_set_record(a), image_set_record(b))
    assert merged["n"] == 100
    assert overlap_share(merged, a) == overlap_share(merged, b) == 1.0
    assert merge_records(image_set_record(a), None) == image_set_record(a)
    again = merge_records(merged, image_set_record(a))  # a resumed run adds nothing new
    assert again["n"] == 100


def test_no_record_or_files_gives_none(tmp_path: Path) -> None:
    files = _files(tmp_path, 3, "x")
    assert overlap_share(None, files) is None
    assert overlap_share({}, files) is None
    assert overlap_share(image_set_record(files), []) is None
