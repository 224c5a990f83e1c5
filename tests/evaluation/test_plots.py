"""Tests for utils/evaluation/plots.py: every figure is written as a readable image, nothing is shown."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.data.images import write_image
from utils.evaluation import plots
from utils.inference import drawing
from utils.evaluation.metrics import ConfusionMatrix, match_predictions, pr_curves

NAMES = ["cat", "dog", "bird"]


def _readable(path: Path) -> np.ndarray:
    """The written image, asserting it exists, is non-empty and decodes."""
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 0
    img = cv2.imread(str(path))
    assert img is not None and img.ndim == 3 and img.shape[2] == 3
    return img


@pytest.fixture
def pr_result():
    rng = np.random.default_rng(0)
    gt = np.array([[0, 0, 0, 20, 20], [1, 30, 30, 60, 60], [2, 70, 10, 90, 40]], dtype=float)
    pred = np.array([[0, 0, 20, 20, 0.9, 0], [31, 29, 61, 60, 0.6, 1], [0, 50, 10, 60, 0.4, 2],
                     [70, 10, 88, 40, 0.3, 2]], dtype=float)
    tp = match_predictions(pred, gt)
    conf = np.clip(pred[:, 4] + rng.normal(0, 0.01, len(pred)), 0, 1)
    return pr_curves(tp, conf, pred[:, 5], gt[:, 0], NAMES)


def test_no_pyplot_state_touched(tmp_path):
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures = list(pyplot.get_fignums()) if pyplot else None
    plots.plot_histogram([1, 2, 2], tmp_path / "h.png", "x")
    plots.plot_tradeoff({"a": ([1, 2], [3, 4])}, "x", "y", tmp_path / "t.png")
    if pyplot is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:  # imported by someone else: at least no figure was registered with it
        assert list(pyplot.get_fignums()) == figures


def test_class_color_deterministic_and_distinct():
    colors = [drawing.class_color(i) for i in range(20)]
    assert colors == [drawing.class_color(i) for i in range(20)]
    assert len(set(colors)) == 20
    assert all(0 <= v <= 255 for c in colors for v in c)
    assert drawing.class_color(3, bgr=False) == drawing.class_color(3)[::-1]


def test_pr_and_metric_curves(tmp_path, pr_result):
    _readable(plots.plot_pr_curve(pr_result, tmp_path / "PR_curve.png"))
    _readable(plots.plot_pr_curve(pr_result, tmp_path / "PR_coco.png", map50=0.5))
    for metric in ("f1", "precision", "recall"):
        _readable(plots.plot_metric_curve(pr_result, tmp_path / f"{metric}.png", metric))
    with pytest.raises(ValueError, match="metric"):
        plots.plot_metric_curve(pr_result, tmp_path / "x.png", "map")


def test_curves_with_no_classes(tmp_path):
    empty = pr_curves(np.zeros((0, 10), bool), [], [], [], NAMES)
    _readable(plots.plot_pr_curve(empty, tmp_path / "pr.png"))
    _readable(plots.plot_metric_curve(empty, tmp_path / "f1.png"))


def test_confusion_matrix_plot(tmp_path):
    cm = ConfusionMatrix(nc=3)
    cm.update(np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.9, 2]]),
              np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]]))
    _readable(plots.plot_confusion_matrix(cm.matrix, NAMES, tmp_path / "confusion_matrix.png"))
    _readable(plots.plot_confusion_matrix(cm.matrix, NAMES, tmp_path / "raw.png", normalize=False))


def test_plot_images_labels_and_predictions(tmp_path):
    images = torch.randint(0, 255, (5, 3, 96, 128), dtype=torch.uint8)
    labels = torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.3], [0, 2, 0.2, 0.2, 0.1, 0.1],
                           [3, 1, 0.7, 0.6, 0.3, 0.5]])
    img = _readable(plots.plot_images(images, labels, [f"im{i}.jpg" for i in range(5)], NAMES,
                                      tmp_path / "train_batch0.jpg"))
    assert img.shape[:2] == (2 * 96, 3 * 128)  # 3x3 grid, empty third row cropped
    preds = [torch.tensor([[10.0, 10, 60, 50, 0.9, 1], [0, 0, 5, 5, 0.1, 0]])]
    preds += [torch.zeros(0, 6)] * 4
    _readable(plots.plot_images(images.float() / 255, preds, None, NAMES, tmp_path / "pred.jpg"))
    seven = np.array([[1, 0, 40.0, 30, 20, 10, 0.8]])  # pixel labels with confidence
    _readable(plots.plot_images(images.numpy(), seven, None, None, tmp_path / "seven.png"))
    _readable(plots.plot_images(images, None, fname=tmp_path / "plain.jpg"))


def test_plot_images_respects_limits(tmp_path):
    images = np.zeros((20, 3, 640, 640), dtype=np.uint8)
    img = _readable(plots.plot_images(images, np.zeros((0, 6)), fname=tmp_path / "big.jpg",
                                      max_size=512, max_subplots=4))
    assert max(img.shape[:2]) <= 512


def test_plot_results(tmp_path):
    csv_path = tmp_path / "results.csv"
    rows = ["epoch, train/box_loss, train/obj_loss, metrics/mAP_0.5, metrics/mAP_0.5:0.95, note"]
    rows += [f"{e}, {1 / (e + 1):.4f}, {0.5 / (e + 1):.4f}, {0.1 * e:.3f}, {0.05 * e:.3f}, x"
             for e in range(4)]
    csv_path.write_text("\n".join(rows) + "\n")
    out = plots.plot_results(csv_path)
    assert out == tmp_path / "results.png"
    _readable(out)
    header_only = tmp_path / "empty" / "results.csv"
    header_only.parent.mkdir()
    header_only.write_text("epoch,loss\n")
    _readable(plots.plot_results(header_only, tmp_path / "empty.png"))


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.c_[rng.integers(0, 3, 50), rng.uniform(0.1, 0.9, (50, 2)),
                   rng.uniform(0.01, 0.3, (50, 2))]
    _readable(plots.plot_labels(labels, NAMES, tmp_path / "labels.jpg"))
    _readable(plots.plot_labels(np.zeros((0, 5)), NAMES, tmp_path / "none.jpg"))


def test_draw_detections_copy_and_caption(tmp_path):
    img = np.full((120, 160, 3), 128, dtype=np.uint8)
    out = drawing.draw_detections(img, np.array([[10, 20, 80, 100]]), [0.87], [1], NAMES,
                                caption="hard φ=0.73")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 128).all()                      # input untouched
    assert not np.array_equal(out, img)
    assert not np.array_equal(out[:12, :60], img[:12, :60])  # caption in the top-left corner
    ascii_caption = drawing.draw_detections(img, torch.zeros(0, 4), [], [], NAMES, caption="easy")
    assert not np.array_equal(ascii_caption[:12, :40], img[:12, :40])
    _readable(write_image(tmp_path / "det.jpg", out))


def test_histogram_gallery_tradeoff(tmp_path):
    rng = np.random.default_rng(0)
    _readable(plots.plot_histogram(rng.uniform(size=200), tmp_path / "hist.png", "router score φ",
                                   vlines={"threshold": 0.4}))
    _readable(plots.plot_histogram([], tmp_path / "empty_hist.png", "score"))
    sizes = ((60, 90), (100, 40), (50, 50))
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    gallery = _readable(plots.plot_gallery(images, ["easy φ=0.12", "hard", "x"],
                                           tmp_path / "gallery.jpg",
                                           cols=2, tile=64))
    assert gallery.shape[1] == 128
    with pytest.raises(ValueError, match="captions"):
        plots.plot_gallery(images, ["a"], tmp_path / "bad.jpg")
    points = {"dynamic": ([112, 130, 150], [50.1, 51.5, 52.0]),
              "static": ([100, 150], [49.0, 52.0])}
    _readable(plots.plot_tradeoff(points, "GFLOPs", "mAP", tmp_path / "sub" / "tradeoff.png"))
    with pytest.raises(ValueError, match="values"):
        plots.plot_tradeoff({"a": ([1, 2], [1])}, "x", "y", tmp_path / "bad.png")
