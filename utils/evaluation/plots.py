"""Figures for training, evaluation and router analysis (annotation: :mod:`utils.inference.drawing`).

Every ``plot_*`` function writes one image file (format from the suffix, via OpenCV) and returns
its path. Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, so no window is
opened and pyplot's global state is never touched. Images passed to or returned by the
annotation helpers are ``HxWx3`` ``uint8`` BGR unless stated otherwise.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence, Union

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.boxes import xywh2xyxy
from utils.data.config import names_list
from utils.data.images import write_image
from utils.inference.drawing import class_color, draw_box, line_style, put_text

if TYPE_CHECKING:
    from utils.data.config import Names
    from utils.evaluation.metrics import ConfusionMatrix, PRResult

PathLike = Union[str, Path]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

__all__ = [
    "plot_pr_curve", "plot_metric_curve", "plot_confusion_matrix", "plot_images",
    "plot_results", "plot_labels", "plot_histogram", "plot_gallery",
    "plot_tradeoff",
]


# --------------------------------------------------------------------------- colours and I/O
def _mpl_color(i: int) -> tuple[float, float, float]:
    """:func:`class_color` as matplotlib RGB floats."""
    return tuple(v / 255 for v in class_color(i, bgr=False))


def _save_figure(fig: Figure, path: PathLike) -> Path:
    """Render a figure with Agg and write it with :func:`write_image`."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return write_image(path, cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# --------------------------------------------------------------------------- curves
def _curve_figure(xlabel: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(9, 6), dpi=100, layout="tight")
    ax = fig.add_subplot()
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return fig, ax


def _class_lines(ax, result: PRResult, curves: np.ndarray, x: np.ndarray,
                 labels: list[str]) -> None:
    """One thin line per class; coloured and in the legend only when there are few classes."""
    few = len(result.classes) < 21
    for k, c in enumerate(result.classes):
        ax.plot(x, curves[k], lw=1, color=_mpl_color(c) if few else "grey",
                label=labels[k] if few else None)


def plot_pr_curve(result: PRResult, path: PathLike, map50: float | None = None) -> Path:
    """Precision-recall curve per class plus their mean.

    The legend's per-class AP50 comes from the interpolated curve (plot only). Pass the
    pycocotools ``map50`` to show the reported number for the mean curve.
    """
    fig, ax = _curve_figure("Recall", "Precision")
    labels = [f"{n} {ap:.3f}" for n, ap in zip(result.names, result.ap50)]
    _class_lines(ax, result, result.pr, result.px, labels)
    if len(result.classes):
        mean_label = (f"all classes {map50:.3f} mAP@0.5 (COCO)" if map50 is not None
                      else f"all classes {result.ap50.mean():.3f} AP@0.5 (interp.)")
        ax.plot(result.px, result.pr.mean(0), lw=3, color="tab:blue", label=mean_label)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title("Precision-Recall curve")
    return _save_figure(fig, path)


def plot_metric_curve(result: PRResult, path: PathLike, metric: str = "f1") -> Path:
    """F1, precision or recall against the confidence threshold, per class plus the mean."""
    curves = {"f1": result.f1, "precision": result.precision, "recall": result.recall}
    if metric not in curves:
        raise ValueError(f"metric must be one of {sorted(curves)}, got {metric!r}")
    ylabel = {"f1": "F1", "precision": "Precision", "recall": "Recall"}[metric]
    fig, ax = _curve_figure("Confidence", ylabel)
    _class_lines(ax, result, curves[metric], result.px, list(result.names))
    if len(result.classes):
        mean = curves[metric].mean(0)
        best = int(mean.argmax())
        ax.plot(result.px, mean, lw=3, color="tab:blue",
                label=f"all classes {mean[best]:.2f} at {result.px[best]:.3f}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(f"{ylabel}-Confidence curve")
    return _save_figure(fig, path)


def plot_confusion_matrix(matrix: np.ndarray | ConfusionMatrix, names: Names, path: PathLike,
                          normalize: bool = True) -> Path:
    """Heat map of ``matrix[predicted, true]`` (last row/column = background).

    With ``normalize`` every column (true class) sums to 1.
    """
    m = np.asarray(getattr(matrix, "matrix", matrix), dtype=np.float64)
    nc = m.shape[0] - 1
    if normalize:
        m = m / np.maximum(m.sum(0, keepdims=True), 1e-9)
    labels = names_list(names)[:nc] + ["background"]
    side = min(16.0, max(6.0, 0.4 * (nc + 1) + 3))
    fig = Figure(figsize=(side, side * 0.85), dpi=100, layout="tight")
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if nc < 30:
        _annotate_cells(ax, m, normalize)
    if nc < 100:
        ticks = np.arange(nc + 1)
        ax.set_xticks(ticks, labels, rotation=90, fontsize=8)
        ax.set_yticks(ticks, labels, fontsize=8)
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion matrix")
    return _save_figure(fig, path)


def _annotate_cells(ax, m: np.ndarray, normalize: bool) -> None:
    """Write each non-zero cell's value in it."""
    top = m.max() if m.size else 0
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center",
                    fontsize=7, color="white" if v > 0.5 * top else "black")


# --------------------------------------------------------------------------- image mosaics
def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 as is; float in 0-1 (scaled by 255) or 0-255 (clipped) converted."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float32)
    return (arr * 255 if arr.size and arr.max() <= 1.0 else arr).clip(0, 255).astype(np.uint8)


def _batch_to_hwc_uint8(images: ArrayLike) -> np.ndarray:
    """(b, 3, h, w) or (b, h, w, 3), uint8 or float -> (b, h, w, 3) uint8."""
    arr = _numpy(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(_to_uint8(arr))


def _image_boxes(targets, i: int, h: int, w: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Boxes (k, 4) xyxy in pixels, classes and confidences (None for labels) of image ``i``.

    ``targets``: ``(n, 6)`` labels ``[img_idx, cls, cx, cy, w, h]`` (normalised or pixels),
    ``(n, 7)`` predictions with a trailing confidence, or a per-image list of ``(m, 6)``
    ``[x1, y1, x2, y2, conf, cls]`` pixel predictions (arrays or tensors); None: no boxes.
    """
    if targets is None:
        return np.zeros((0, 4)), np.zeros(0, dtype=int), None
    per_image = isinstance(targets, (list, tuple)) and all(
        isinstance(t, (np.ndarray, torch.Tensor)) for t in targets)
    if per_image:
        det = _numpy(targets[i]) if i < len(targets) else np.zeros((0, 6))
        det = det.reshape(-1, 6).astype(np.float64)
        return det[:, :4], det[:, 5].astype(int), det[:, 4]
    t = _numpy(targets).astype(np.float64)
    t = t.reshape(-1, t.shape[-1]) if t.size else np.zeros((0, 6))
    t = t[t[:, 0] == i]
    boxes = xywh2xyxy(t[:, 2:6])
    if boxes.size and boxes.max() <= 1.01:  # normalised
        boxes *= np.array([w, h, w, h], dtype=boxes.dtype)
    conf = t[:, 6] if t.shape[1] > 6 else None
    return boxes, t[:, 1].astype(int), conf


def _draw_tile(img_rgb: np.ndarray, boxes, cls, conf, scale: float, names: list[str],
               conf_thres: float, label: str | None) -> np.ndarray:
    """One resized BGR mosaic tile with its boxes and (optional) file name."""
    h, w = img_rgb.shape[:2]
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    tile = cv2.cvtColor(cv2.resize(img_rgb, size, interpolation=cv2.INTER_AREA) if scale < 1
                        else img_rgb, cv2.COLOR_RGB2BGR)
    lw, fs = line_style(*tile.shape[:2])
    for k in range(len(boxes)):
        if conf is not None and conf[k] < conf_thres:
            continue
        name = names[cls[k]] if 0 <= cls[k] < len(names) else str(cls[k])
        text = name if conf is None else f"{name} {conf[k]:.2f}"
        draw_box(tile, boxes[k] * scale, int(cls[k]), text, lw, fs * 0.8)
    if label:
        put_text(tile, label[:40], (2, 2), fs * 0.8, (255, 255, 255), (40, 40, 40))
    cv2.rectangle(tile, (0, 0), (tile.shape[1] - 1, tile.shape[0] - 1), (255, 255, 255), 2)
    return tile


def plot_images(images: ArrayLike, targets=None, paths: Sequence[str] | None = None,
                names: Names | None = None, fname: PathLike = "images.jpg", max_size: int = 1280,
                max_subplots: int = 16, conf_thres: float = 0.25) -> Path:
    """Mosaic (square grid, unused rows cropped) of a batch with its labels or predictions.

    ``images`` is ``(b, 3, h, w)`` RGB, uint8 or float; see :func:`_image_boxes` for the
    ``targets`` formats. Predictions below ``conf_thres`` are not drawn. The mosaic is at most
    ``max_size`` pixels on its longer side; tiles are captioned with the file names of ``paths``.
    """
    imgs = _batch_to_hwc_uint8(images)[:max_subplots]
    b, h, w = imgs.shape[:3]
    if b == 0:
        raise ValueError("plot_images needs at least one image")
    grid = max(1, math.ceil(math.sqrt(b)))
    scale = min(1.0, max_size / (grid * max(h, w)))
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    mosaic = np.full((math.ceil(b / grid) * th, grid * tw, 3), 255, dtype=np.uint8)
    label_names = names_list(names) if names is not None else []
    for i in range(b):
        boxes, cls, conf = _image_boxes(targets, i, h, w)
        label = Path(paths[i]).name if paths is not None and i < len(paths) else None
        tile = _draw_tile(imgs[i], boxes, cls, conf, scale, label_names, conf_thres, label)
        y, x = (i // grid) * th, (i % grid) * tw
        mosaic[y:y + th, x:x + tw] = tile
    return write_image(fname, mosaic)


def _fit_tile(img: np.ndarray, tile: int) -> np.ndarray:
    """Resize keeping the aspect ratio and pad with grey to a ``tile`` x ``tile`` square."""
    img = _to_uint8(np.asarray(img))
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    r = tile / max(h, w)
    size = (max(1, round(w * r)), max(1, round(h * r)))
    resized = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    out = np.full((tile, tile, 3), 114, dtype=np.uint8)
    y, x = (tile - resized.shape[0]) // 2, (tile - resized.shape[1]) // 2
    out[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return out


def plot_gallery(images: Sequence[np.ndarray], captions: Sequence[str], path: PathLike,
                 cols: int = 4, tile: int = 256) -> Path:
    """Grid of BGR images, each letterboxed to ``tile`` pixels with its caption underneath."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    n = max(1, len(images))
    cols = max(1, min(cols, n))
    rows, strip = math.ceil(n / cols), max(18, tile // 9)
    canvas = np.full((rows * (tile + strip), cols * tile, 3), 255, dtype=np.uint8)
    for i, (img, caption) in enumerate(zip(images, captions)):
        y, x = (i // cols) * (tile + strip), (i % cols) * tile
        canvas[y:y + tile, x:x + tile] = _fit_tile(_numpy(img), tile)
        put_text(canvas, str(caption), (x + 2, y + tile + 1), strip / 40, (0, 0, 0))
    return write_image(path, canvas)


# --------------------------------------------------------------------------- training / data
def _read_results_csv(csv_path: PathLike) -> tuple[list[str], np.ndarray]:
    """Header and float matrix (NaN where a cell is not numeric) of a results.csv."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f"{csv_path} is empty")
    header = [h.strip() for h in rows[0]]

    def number(cell: str) -> float:
        try:
            return float(cell)
        except ValueError:
            return float("nan")

    data = np.array([[number(c) for c in r[:len(header)]] + [np.nan] * (len(header) - len(r))
                     for r in rows[1:]], dtype=np.float64).reshape(-1, len(header))
    return header, data


def plot_results(csv_path: PathLike, path: PathLike | None = None) -> Path:
    """Grid of every numeric column of a training results.csv against the epoch.

    Written to ``results.png`` beside the CSV unless ``path`` is given.
    """
    header, data = _read_results_csv(csv_path)
    x_col = header.index("epoch") if "epoch" in header else None
    x = data[:, x_col] if x_col is not None else np.arange(len(data))
    cols = [j for j in range(len(header)) if j != x_col and np.isfinite(data[:, j]).any()]
    ncols = max(1, min(5, len(cols)))
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), dpi=100, layout="tight")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, j in zip(axes, cols):
        ax.plot(x, data[:, j], marker=".", lw=1.5, markersize=5)
        ax.set_title(header[j], fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(cols):]:
        ax.axis("off")
    if not cols:
        axes[0].text(0.5, 0.5, "no numeric data", ha="center", va="center")
    out = Path(path) if path is not None else Path(csv_path).with_name("results.png")
    return _save_figure(fig, out)


def _box_shapes_image(wh: np.ndarray, side: int = 500) -> np.ndarray:
    """Outlines of (up to 1000) boxes centred in a square, showing their sizes and shapes."""
    img = np.full((side, side, 3), 255, dtype=np.uint8)
    for k, (bw, bh) in enumerate(wh[:1000]):
        half = np.array([bw, bh]) * side / 2
        p1 = tuple(int(v) for v in side / 2 - half)
        p2 = tuple(int(v) for v in side / 2 + half)
        cv2.rectangle(img, p1, p2, class_color(k, bgr=False), 1)
    return img


def plot_labels(labels: ArrayLike, names: Names, path: PathLike) -> Path:
    """Dataset label statistics: class histogram, box centres, box sizes, box shapes.

    ``labels`` is ``(n, 5)`` ``[cls, cx, cy, w, h]`` normalised.
    """
    lab = _numpy(labels).astype(np.float64)
    lab = lab.reshape(-1, 5) if lab.size else np.zeros((0, 5))
    label_names = names_list(names)
    nc = max(len(label_names), int(lab[:, 0].max()) + 1 if len(lab) else 0)
    counts = np.bincount(lab[:, 0].astype(int), minlength=nc)
    fig = Figure(figsize=(10, 9), dpi=100, layout="tight")
    ax = fig.subplots(2, 2).ravel()
    ax[0].bar(np.arange(nc), counts, color=[_mpl_color(c) for c in range(nc)])
    if 0 < nc < 30:
        ticks = label_names + [str(c) for c in range(len(label_names), nc)]
        ax[0].set_xticks(np.arange(nc), ticks, rotation=90, fontsize=8)
    ax[0].set(ylabel="instances", title=f"{len(lab)} boxes, {nc} classes")
    ax[1].scatter(lab[:, 1], lab[:, 2], s=3, alpha=0.3)
    ax[1].set(xlabel="x", ylabel="y", xlim=(0, 1), ylim=(1, 0), title="box centres")
    ax[2].scatter(lab[:, 3], lab[:, 4], s=3, alpha=0.3)
    ax[2].set(xlabel="width", ylabel="height", xlim=(0, 1), ylim=(0, 1), title="box sizes")
    ax[3].imshow(_box_shapes_image(lab[:, 3:5]))
    ax[3].set(title="box shapes (centred)")
    ax[3].axis("off")
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- analysis
def plot_histogram(values: ArrayLike, path: PathLike, xlabel: str, bins: int = 50,
                   vlines: Mapping[str, float] | None = None, title: str | None = None) -> Path:
    """Histogram of ``values`` (e.g. router scores) with optional labelled vertical lines."""
    v = _numpy(values).astype(np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    fig = Figure(figsize=(7, 4.5), dpi=100, layout="tight")
    ax = fig.add_subplot()
    ax.hist(v, bins=bins, color="tab:blue", alpha=0.8)
    for k, (label, x) in enumerate((vlines or {}).items()):
        ax.axvline(float(x), color=_mpl_color(k + 1), ls="--", lw=1.5,
                   label=f"{label} = {float(x):.3g}")
    if vlines:
        ax.legend(fontsize=8)
    ax.set(xlabel=xlabel, ylabel="count", title=title or f"{len(v)} values")
    return _save_figure(fig, path)


def plot_tradeoff(points: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
                  ylabel: str, path: PathLike, title: str | None = None) -> Path:
    """One line with markers per label, points joined in order of increasing x."""
    fig = Figure(figsize=(7, 5), dpi=100, layout="tight")
    ax = fig.add_subplot()
    for k, (label, (xs, ys)) in enumerate(points.items()):
        x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"{label!r}: {x.size} x values but {y.size} y values")
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], y[order], marker="o", lw=1.5, color=_mpl_color(k), label=str(label))
    if points:
        ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    return _save_figure(fig, path)
