"""The router's training split, and the one-line warning when the detectors learned from it."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from utils.data.config import load_data_config
from utils.data.image_set import image_set_record
from utils.routing.router_data import lineage, router_split, seen_warning


def _folder(root: Path, name: str, n: int) -> list[Path]:
    (root / "images" / name).mkdir(parents=True)
    (root / "labels" / name).mkdir(parents=True)
    out = []
    for i in range(n):
        p = root / "images" / name / f"{name}{i}.jpg"
        cv2.imwrite(str(p), np.full((32, 32, 3), 10 * i, np.uint8))
        (root / "labels" / name / f"{name}{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        out.append(p)
    return out


def _yaml(root: Path, **splits: str) -> Path:
    f = root / "d.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), **splits, "names": ["a"]}))
    return f


def test_router_split_is_used_when_given(tmp_path: Path) -> None:
    for s in ("train", "val", "held"):
        _folder(tmp_path, s, 3)
    with_router = load_data_config(_yaml(tmp_path, train="images/train", val="images/val", router="images/held"))
    assert router_split(with_router) == ([tmp_path / "images" / "held"], "router")
    plain = load_data_config(_yaml(tmp_path, train="images/train", val="images/val"))
    assert router_split(plain) == ([tmp_path / "images" / "train"], "train")


def test_warns_only_on_the_detectors_own_images(tmp_path: Path) -> None:
    train, held = _folder(tmp_path, "train", 6), _folder(tmp_path, "held", 6)
    meta = {"trained_on": image_set_record(train)}
    line = seen_warning(meta, train, "train", "d.yaml")
    assert line is not None and "\n" not in line
    assert "100% of the router's training images (train split of d.yaml)" in line and "router:" in line
    assert seen_warning(meta, held, "router", "d.yaml") is None
    assert seen_warning(meta, train[:2] + held, "train", "d.yaml") is None  # a third seen: below the limit
    assert seen_warning({}, train, "train", "d.yaml") is None  # official weights: nothing known


def test_lineage_carries_both_records(tmp_path: Path) -> None:
    train, held = _folder(tmp_path, "train", 4), _folder(tmp_path, "held", 3)
    out = lineage({"trained_on": image_set_record(train)}, held)
    assert out["trained_on"]["n"] == 4 and out["router_trained_on"]["n"] == 3
    assert "trained_on" not in lineage(None, held)
