"""Tests for utils/data/config.py: data YAML dialects, sources, names, hyperparameter files."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data.config import (
    DataConfigError,
    find_images,
    image_to_label_path,
    load_data_config,
    load_hyp,
    names_list,
    parse_names,
)

REPO = Path(__file__).resolve().parents[2]


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    return path


def _write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.fixture()
def dataset_root(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for i in range(3):
            _image(root / "images" / split / f"{i}.jpg")
    (root / "train.txt").write_text("./images/train/0.jpg\nimages/train/1.jpg\n\n# comment\n")
    return root


def test_yolov7_form(dataset_root: Path) -> None:
    cfg_file = _write_yaml(dataset_root / "data.yaml", {
        "train": "./train.txt", "val": "./images/val", "nc": 2, "names": ["cat", "dog"],
        "download": "ignored"})
    cfg = load_data_config(cfg_file)
    assert cfg.names == ["cat", "dog"] and cfg.nc == 2
    assert cfg.train == [(dataset_root / "train.txt").resolve()]
    assert cfg.val == [(dataset_root / "images" / "val").resolve()]
    assert cfg.test == [] and cfg.path == dataset_root.resolve()
    assert [p.name for p in find_images(cfg.train)] == ["0.jpg", "1.jpg"]
    assert len(find_images(cfg.val)) == 3


def test_ultralytics_form_with_path_and_names_dict(dataset_root: Path, tmp_path: Path) -> None:
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    cfg_file = _write_yaml(cfg_dir / "u.yaml", {
        "path": "../ds", "train": "images/train", "val": "images/val", "test": None,
        "names": {0: "cat", 1: "dog", 2: "bird"}})
    cfg = load_data_config(cfg_file)
    assert cfg.path == dataset_root.resolve()
    assert cfg.names == ["cat", "dog", "bird"] and cfg.nc == 3
    assert cfg.split("train") == [(dataset_root / "images" / "train").resolve()]


def test_list_sources_and_dedup(dataset_root: Path) -> None:
    cfg_file = _write_yaml(dataset_root / "d.yaml", {
        "path": str(dataset_root), "train": ["images/train", "train.txt", "images/val/0.jpg"],
        "val": "images/val", "names": ["a"]})
    cfg = load_data_config(cfg_file)
    assert len(cfg.train) == 3
    images = find_images(cfg.train)
    assert len(images) == 4  # 3 train images (txt entries are duplicates) + 1 val image
    assert len(set(images)) == len(images)


def test_txt_list_relative_to_root_fallback(dataset_root: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    txt = lists / "subset.txt"
    txt.write_text("images/val/2.jpg\n")
    assert find_images(txt, root=dataset_root) == [dataset_root / "images" / "val" / "2.jpg"]


def test_directory_search_is_recursive_and_filters(tmp_path: Path) -> None:
    _image(tmp_path / "a" / "b" / "x.PNG")
    _image(tmp_path / "a" / "y.jpg")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    found = find_images(tmp_path / "a")
    assert sorted(p.name for p in found) == ["x.PNG", "y.jpg"]


def test_nc_names_mismatch_is_a_clear_error(dataset_root: Path) -> None:
    cfg_file = _write_yaml(dataset_root / "bad.yaml", {
        "train": "images/train", "val": "images/val", "nc": 3, "names": ["a", "b"]})
    with pytest.raises(DataConfigError, match=r"nc=3 but 2 names"):
        load_data_config(cfg_file)


def test_names_only_or_nc_only() -> None:
    assert parse_names(None, 2) == ["class0", "class1"]
    assert parse_names({"0": "a", "1": "b"}, None) == ["a", "b"]
    with pytest.raises(DataConfigError):
        parse_names({0: "a", 2: "b"}, None)
    with pytest.raises(DataConfigError):
        parse_names(None, None)
    with pytest.raises(DataConfigError):
        parse_names(["a"], 0)


def test_missing_yaml_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_data_config(missing)


def test_missing_source_dir_names_path(dataset_root: Path) -> None:
    cfg_file = _write_yaml(dataset_root / "m.yaml", {
        "train": "images/train", "val": "images/missing_val", "names": ["a"]})
    with pytest.raises(FileNotFoundError, match="missing_val"):
        load_data_config(cfg_file)


def test_missing_optional_split_is_dropped(dataset_root: Path, caplog) -> None:
    cfg_file = _write_yaml(dataset_root / "t.yaml", {
        "train": "images/train", "val": "images/val", "test": "test-dev.txt", "names": ["a"]})
    with caplog.at_level(logging.WARNING):
        cfg = load_data_config(cfg_file)
    assert cfg.test == []
    assert "test-dev.txt" in caplog.text


def test_missing_required_split(dataset_root: Path) -> None:
    cfg_file = _write_yaml(dataset_root / "r.yaml", {"train": "images/train", "names": ["a"]})
    with pytest.raises(DataConfigError, match="val"):
        load_data_config(cfg_file)
    assert load_data_config(cfg_file, require=("train",)).val == []


def test_find_images_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ghost"):
        find_images(tmp_path / "ghost")


def test_image_to_label_path() -> None:
    assert image_to_label_path("/d/images/train/a.jpg") == Path("/d/labels/train/a.txt")
    # only the last "images" folder is replaced
    assert image_to_label_path("/images/x/images/a.png") == Path("/images/x/labels/a.txt")
    # a file *named* images is not a folder
    assert image_to_label_path("/d/images") == Path("/d/images.txt")
    assert image_to_label_path("/d/pics/a.jpg") == Path("/d/pics/a.txt")


HYP_KEYS = {"lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum",
            "warmup_bias_lr", "box", "cls", "cls_pw", "obj", "obj_pw", "iou_t", "anchor_t",
            "fl_gamma", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
            "perspective", "flipud", "fliplr", "mosaic", "mixup", "copy_paste", "paste_in",
            "loss_ota"}


@pytest.mark.parametrize("name,expected", [
    ("p5", {"lrf": 0.1, "cls": 0.3, "obj": 0.7, "scale": 0.9, "mixup": 0.15}),
    ("p6", {"lrf": 0.2, "cls": 0.3, "obj": 0.7, "scale": 0.9, "mixup": 0.15}),
    ("tiny", {"lrf": 0.01, "cls": 0.5, "obj": 1.0, "scale": 0.5, "mixup": 0.05}),
])
def test_hyp_files(name: str, expected: dict) -> None:
    hyp = load_hyp(REPO / "data" / f"hyp.scratch.{name}.yaml")
    assert set(hyp) == HYP_KEYS
    for key, value in expected.items():
        assert hyp[key] == pytest.approx(value)
    assert hyp["lr0"] == 0.01 and hyp["momentum"] == 0.937 and hyp["fliplr"] == 0.5


def test_load_hyp_rejects_non_numbers(tmp_path: Path) -> None:
    bad = _write_yaml(tmp_path / "h.yaml", {"lr0": "fast"})
    with pytest.raises(DataConfigError, match="lr0"):
        load_hyp(bad)
    with pytest.raises(FileNotFoundError):
        load_hyp(tmp_path / "none.yaml")


def test_names_list():
    assert names_list({1: "b", 0: "a"}) == ["a", "b"]
    assert names_list(("x", "y")) == ["x", "y"]
