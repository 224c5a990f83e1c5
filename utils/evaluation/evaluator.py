"""Accumulate detections and ground truth over a dataset, then score them (pycocotools mAP)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.boxes import xywhn2xyxy
from utils.evaluation.metrics import ConfusionMatrix, coco_evaluate, match_predictions, pr_curves
from utils.inference.transform import LetterboxTransform, ShapeInfo


def ground_truth(labels: torch.Tensor, index: int, input_hw: tuple[int, int], shape_info: ShapeInfo) -> np.ndarray:
    """Labels of image ``index`` of a batch as (n, 5) [cls, x1, y1, x2, y2] original pixels."""
    lab = labels[labels[:, 0] == index]
    h, w = input_hw
    xyxy = LetterboxTransform.to_original(xywhn2xyxy(lab[:, 2:6].float(), w, h), input_hw, shape_info)
    return torch.cat((lab[:, 1:2].float(), xyxy), 1).cpu().numpy()


@dataclass
class DetectionStats:
    """Per-image predictions and ground truth of one prediction stream (e.g. detector 1)."""

    names: list[str]
    preds: list[np.ndarray] = field(default_factory=list)
    gts: list[np.ndarray] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    confusion: ConfusionMatrix | None = None

    def __post_init__(self) -> None:
        self.confusion = ConfusionMatrix(len(self.names))

    def add(self, det: np.ndarray, gt: np.ndarray, orig_hw: tuple[int, int]) -> None:
        """``det`` (m, 6) [x1, y1, x2, y2, conf, cls]; ``gt`` (n, 5) [cls, x1, y1, x2, y2]."""
        self.preds.append(det)
        self.gts.append(gt)
        self.sizes.append(orig_hw)
        self.confusion.update(det, gt)

    def compute(self) -> dict:
        """COCO mAP (pycocotools) plus precision/recall at the confidence of best mean F1."""
        coco = coco_evaluate(self.gts, self.preds, self.names, image_sizes=self.sizes)
        tp = [match_predictions(p, g) for p, g in zip(self.preds, self.gts)]
        pr = pr_curves(np.concatenate(tp, 0) if tp else np.zeros((0, 10), bool),
                       _column(self.preds, 4), _column(self.preds, 5),
                       np.concatenate([g[:, 0] for g in self.gts]) if self.gts else np.zeros(0), self.names)
        return {"precision": pr.mp, "recall": pr.mr, "map50": coco["map50"], "map": coco["map"],
                "per_class": coco["per_class"], "pr": pr}

    def plot(self, save_dir: Path, result: dict | None = None) -> None:
        """PR / F1 / P / R curves and the confusion matrix into ``save_dir``."""
        from utils.evaluation import plots
        result = result or self.compute()
        pr = result["pr"]
        plots.plot_pr_curve(pr, save_dir / "PR_curve.png", map50=result["map50"])
        for metric, label in (("f1", "F1"), ("precision", "P"), ("recall", "R")):
            plots.plot_metric_curve(pr, save_dir / f"{label}_curve.png", metric=metric)
        plots.plot_confusion_matrix(self.confusion, self.names, save_dir / "confusion_matrix.png")


def _column(arrays: list[np.ndarray], j: int) -> np.ndarray:
    return np.concatenate([a[:, j] for a in arrays]) if arrays else np.zeros(0)
