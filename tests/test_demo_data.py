"""Tests for data/make_demo_data.py: layout, determinism, label validity, difficulty spread."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.make_demo_data import CLASSES, main, make_demo_dataset
from utils.data.config import find_images, image_to_label_path, load_data_config
from utils.data.labels import scan_dataset


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_train=40, n_val=10,
                             img_size=128, seed=7)


def test_layout_and_config(demo: Path) -> None:
    root = demo.parent
    cfg = load_data_config(demo)
    assert cfg.path == root and cfg.names == list(CLASSES) and cfg.nc == 4
    assert len(find_images(cfg.train)) == 40 and len(find_images(cfg.val)) == 10
    for image in find_images(cfg.train + cfg.val):
        assert image.suffix == ".jpg" and image_to_label_path(image).is_file()
    side = json.loads((root / "difficulty.json").read_text())
    assert len(side["difficulty"]) == 50
    assert all((root / name).is_file() for name in side["difficulty"])


def test_labels_are_clean(demo: Path) -> None:
    cfg = load_data_config(demo)
    samples, report = scan_dataset(find_images(cfg.train + cfg.val), nc=cfg.nc, use_cache=False)
    assert report.issues == [] and report.n_usable == 50 and report.n_backgrounds == 0
    for s in samples:
        assert s.shape is not None and max(s.shape) == 128
        assert ((s.labels[:, 1:] > 0) & (s.labels[:, 1:] <= 1)).all()


def test_difficulty_spread_drives_the_scenes(demo: Path) -> None:
    root = demo.parent
    side = json.loads((root / "difficulty.json").read_text())
    names = sorted(n for n in side["difficulty"] if "/train/" in n)
    d = np.array([side["difficulty"][n] for n in names])
    assert d.min() < 0.05 and d.max() > 0.95 and np.histogram(d, bins=4, range=(0, 1))[0].min() >= 8
    counts, areas = [], []
    for n in names:
        rows = np.loadtxt(image_to_label_path(root / n), ndmin=2)
        counts.append(len(rows))
        areas.append(float((rows[:, 3] * rows[:, 4]).mean()))
    assert _spearman(d, np.array(counts)) > 0.7  # hard images have many objects ...
    assert _spearman(d, np.array(areas)) < -0.7  # ... that are small
    contrast = np.array([side["details"][n]["contrast"] for n in names])
    assert _spearman(d, contrast) < -0.9
    easy = [n for n in names if side["difficulty"][n] < 0.1]
    assert all(side["details"][n]["n_objects"] <= 3 for n in easy)


def test_deterministic_by_seed(tmp_path: Path) -> None:
    def snapshot(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".jpg", ".txt")}

    a = make_demo_dataset(tmp_path / "a", 6, 2, 96, seed=3).parent
    b = make_demo_dataset(tmp_path / "b", 6, 2, 96, seed=3).parent
    c = make_demo_dataset(tmp_path / "c", 6, 2, 96, seed=4).parent
    assert snapshot(a) == snapshot(b)
    assert snapshot(a) != snapshot(c)
    ja = json.loads((a / "difficulty.json").read_text())
    jb = json.loads((b / "difficulty.json").read_text())
    assert ja["difficulty"] == jb["difficulty"]


def test_rerun_removes_stale_files_and_cli(tmp_path: Path) -> None:
    make_demo_dataset(tmp_path, 8, 2, 96, seed=0)
    path = main(["--root", str(tmp_path), "--n-train", "3", "--n-val", "1", "--img-size", "96"])
    assert path == tmp_path.resolve() / "demo.yaml"
    assert len(list((tmp_path / "images" / "train").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "labels" / "train").glob("*.txt"))) == 3
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, 1, 1, img_size=32)
