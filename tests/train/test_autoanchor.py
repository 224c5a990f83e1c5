"""Anchor check: fitness metric, k-means + evolution, and writing anchors into the heads."""
from __future__ import annotations

import copy
import logging
import sys

import numpy as np
import pytest
import torch

from models.head import IDetect
from models.yolo import build_model
from utils.train.autoanchor import (
    anchor_fitness,
    check_anchor_order,
    check_anchors,
    head_anchors_px,
    kmean_anchors,
    label_sizes_px,
)

TRUE_SIZES = np.array([[12, 12], [20, 40], [40, 20],
                       [60, 60], [50, 120], [120, 50],
                       [200, 200], [150, 350], [350, 150]], dtype=np.float64)


def _clusters(per: int = 200, spread: float = 0.05, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([s * np.exp(rng.normal(0, spread, (per, 2))) for s in TRUE_SIZES])


@pytest.fixture(scope="module")
def dy_model_base() -> torch.nn.Module:
    return build_model("dy-yolov7-tiny", nc=2)


@pytest.fixture()
def dy_model(dy_model_base: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(dy_model_base)


def _assert_consistent(head: IDetect) -> None:
    px = head.anchor_grid.view(head.nl, head.na, 2)
    torch.testing.assert_close(head.anchors * head.stride.view(-1, 1, 1), px)
    areas = px.prod(-1).mean(-1)
    assert bool((areas[1:] >= areas[:-1]).all()), "anchor sizes must grow with the stride"


def test_fitness_exact_match() -> None:
    wh = np.array([[10, 20], [50, 50], [300, 100]], dtype=float)
    bpr, aat = anchor_fitness(wh, wh)
    assert bpr == 1.0 and aat >= 1.0


def test_fitness_tiny_labels_huge_anchors() -> None:
    anchors = np.array([[300, 300], [400, 500]], dtype=float)
    wh = np.array([[5, 5], [8, 6], [200, 200]], dtype=float)
    bpr, aat = anchor_fitness(anchors, wh)
    assert bpr == pytest.approx(1 / 3) and aat == pytest.approx(2 / 3)
    assert anchor_fitness(anchors, wh, thr=100.0)[0] == 1.0


def test_fitness_threshold_is_on_both_sides() -> None:
    anchors = np.array([[100, 100]], dtype=float)
    assert anchor_fitness(anchors, np.array([[399.0, 100.0]]))[0] == 1.0
    assert anchor_fitness(anchors, np.array([[100.0, 24.0]]))[0] == 0.0


def test_kmean_recovers_clusters() -> None:
    fitted = kmean_anchors(_clusters(), n=9, generations=300)
    assert fitted.shape == (9, 2)
    assert np.all(np.diff(fitted.prod(1)) >= 0), "sorted by area"
    for size in TRUE_SIZES:
        rel = np.abs(fitted / size - 1).max(1).min()
        assert rel < 0.15, f"no anchor within 15% of {size}: {fitted.round(1)}"


def test_kmean_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.cluster.vq", None)  # makes the import fail
    wh = _clusters(per=50)
    fitted = kmean_anchors(wh, n=9, generations=100)
    assert fitted.shape == (9, 2) and anchor_fitness(fitted, wh)[0] == 1.0
    np.testing.assert_array_equal(fitted, kmean_anchors(wh, n=9, generations=100))


def test_kmean_deterministic_by_seed() -> None:
    wh = _clusters(per=50, spread=0.3)
    a = kmean_anchors(wh, n=9, generations=200, seed=3)
    b = kmean_anchors(wh, n=9, generations=200, seed=3)
    c = kmean_anchors(wh, n=9, generations=200, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_kmean_few_boxes_falls_back_to_random_start() -> None:
    wh = np.array([[30.0, 40.0], [32.0, 41.0]])
    fitted = kmean_anchors(wh, n=9, generations=50)
    assert fitted.shape == (9, 2) and np.all(fitted >= 2.0)


def test_kmean_without_usable_boxes_raises() -> None:
    with pytest.raises(ValueError):
        kmean_anchors(np.array([[1.0, 1.5]]), n=3)


def test_check_anchors_refits_far_labels(dy_model: torch.nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    heads = dy_model.heads
    assert len(heads) == 2
    rng = np.random.default_rng(0)
    # very elongated boxes: no default anchor is within 4x on both sides
    wide = np.array([0.6, 0.01]) * np.exp(rng.normal(0, 0.1, (300, 2)))
    tall = np.array([0.008, 0.5]) * np.exp(rng.normal(0, 0.1, (300, 2)))
    labels = np.concatenate([wide, tall])
    with caplog.at_level(logging.INFO, logger="utils.train.autoanchor"):
        out = check_anchors(dy_model, labels, img_size=640, generations=200)
    assert out["changed"] is True
    assert out["bpr_before"] < 0.5 and out["bpr_after"] > 0.98 > out["bpr_before"]
    assert "new anchors" in caplog.text
    np.testing.assert_allclose(out["anchors"], head_anchors_px(heads[0]), rtol=1e-6)
    for h in heads:
        _assert_consistent(h)
    torch.testing.assert_close(heads[0].anchors, heads[1].anchors)
    torch.testing.assert_close(heads[0].anchor_grid, heads[1].anchor_grid)
    assert anchor_fitness(head_anchors_px(heads[1]), labels * 640)[0] == pytest.approx(out["bpr_after"])


def test_check_anchors_keeps_fitting_anchors(dy_model: torch.nn.Module) -> None:
    before = [(h.anchors.clone(), h.anchor_grid.clone()) for h in dy_model.heads]
    rng = np.random.default_rng(0)
    defaults = head_anchors_px(dy_model.heads[0])
    labels = np.concatenate([defaults * np.exp(rng.normal(0, 0.2, (9, 2))) for _ in range(30)]) / 640
    out = check_anchors(dy_model, labels, img_size=640)
    assert out["changed"] is False and out["bpr_before"] == 1.0 == out["bpr_after"]
    for h, (a, g) in zip(dy_model.heads, before):
        assert torch.equal(h.anchors, a) and torch.equal(h.anchor_grid, g)


def test_check_anchors_no_labels(dy_model: torch.nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    before = dy_model.heads[0].anchor_grid.clone()
    with caplog.at_level(logging.WARNING, logger="utils.train.autoanchor"):
        out = check_anchors(dy_model, np.zeros((0, 2)), img_size=640)
    assert out["changed"] is False and "no labels" in caplog.text
    assert torch.equal(dy_model.heads[0].anchor_grid, before)


def test_check_anchors_plain_model_with_shapes() -> None:
    model = build_model("yolov7-tiny", nc=3)
    rng = np.random.default_rng(2)
    labels = [np.array([0.9, 0.015]) * np.exp(rng.normal(0, 0.1, (20, 2))) for _ in range(20)]
    shapes = rng.integers(300, 1000, (20, 2))
    out = check_anchors(model, labels, img_size=320, shapes=shapes, generations=100)
    assert out["changed"] and out["bpr_after"] > out["bpr_before"]
    _assert_consistent(model.heads[0])


def test_label_sizes_px_scales_and_jitters() -> None:
    labels = [np.array([[0.5, 0.5]]), np.array([[0.1, 0.2], [1.0, 1.0]])]
    np.testing.assert_allclose(label_sizes_px(labels, 100), [[50, 50], [10, 20], [100, 100]])
    shapes = np.array([[200, 100], [100, 400]])
    wh = label_sizes_px(labels, 100, shapes, seed=0)
    base = np.array([[50, 25], [2.5, 20], [25, 100]])
    assert np.all((wh / base > 0.9 - 1e-9) & (wh / base < 1.1 + 1e-9))
    np.testing.assert_array_equal(wh, label_sizes_px(labels, 100, shapes, seed=0))
    with pytest.raises(ValueError):
        label_sizes_px(labels, 100, shapes[:1])


def test_check_anchor_order_flips_reversed_head() -> None:
    px = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
    head = IDetect(nc=2, anchors=px[::-1], ch=[8, 8, 8], strides=[8, 16, 32])
    assert check_anchor_order(head) is True
    _assert_consistent(head)
    expected = torch.tensor(px, dtype=torch.float32).view(3, 3, 2)
    torch.testing.assert_close(head.anchor_grid.view(3, 3, 2), expected)  # levels swapped back
    assert check_anchor_order(head) is False
