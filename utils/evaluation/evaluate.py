"""The evaluation core: run a detector over a dataset once and score it (test.py, train.py, train_router.py).

:func:`evaluate` sends every batch through the one inference path (:class:`Predictor`); for a
dynamic PyTorch model it also keeps both detectors' own detections (from the same pass), so each
detector's mAP and the accuracy-speed sweep come for free. The result is an :class:`EvalResult`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.route import route_mask
from models.flops import route_gflops
from utils.defaults import VAL
from utils.evaluation.evaluator import DetectionStats, ground_truth
from utils.evaluation.metrics import fitness
from utils.inference.predictor import BatchPrediction, Predictor
from utils.inference.score_calibration import ScoreCalibration
from utils.inference.transform import LetterboxTransform

LOGGER = logging.getLogger("dydet.test")
SCORES = ("precision", "recall", "map50", "map")


@dataclass
class RoutingStats:
    """How a dynamic model routed the images, and each detector's own scores (PyTorch only)."""

    easy: int
    hard: int
    avg_gflops: float
    detector1: dict[str, float] | None = None
    detector2: dict[str, float] | None = None
    route_names: tuple[str, str] = ("easy", "hard")  # ('low', 'high') for DualRes

    def to_dict(self) -> dict[str, Any]:
        out = {"easy": self.easy, "hard": self.hard, "avg_gflops": self.avg_gflops, "route_names": list(self.route_names)}
        out.update({k: v for k, v in (("detector1", self.detector1), ("detector2", self.detector2)) if v})
        return out


@dataclass
class EvalResult:
    """Scores of one evaluation pass, with what later analyses need (φ, streams, paths)."""

    precision: float
    recall: float
    map50: float
    map: float
    per_class: dict
    images: int
    speed_ms: dict[str, float]
    avg_gflops: float | None = None
    routing: RoutingStats | None = None
    phi: np.ndarray | None = field(default=None, repr=False)
    paths: list[str] = field(default_factory=list, repr=False)
    streams: dict[str, DetectionStats] = field(default_factory=dict, repr=False)
    predictions: list[tuple[str, np.ndarray]] = field(default_factory=list, repr=False)
    losses: dict[str, float] = field(default_factory=dict)  # validation losses, when a trainer adds them

    def fitness(self) -> float:
        """Best-checkpoint score; a dynamic model scores the mean of its two detectors."""
        r = self.routing
        if r is not None and r.detector1 and r.detector2:
            return float(np.mean([fitness(d["map50"], d["map"]) for d in (r.detector1, r.detector2)]))
        return float(fitness(self.map50, self.map))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able summary (what metrics.json holds)."""
        out = {k: getattr(self, k) for k in (*SCORES, "per_class", "images", "speed_ms")}
        if self.routing is not None:
            out["dynamic"] = self.routing.to_dict()
        elif self.avg_gflops is not None:
            out["avg_gflops"] = self.avg_gflops
        return out

    def table(self, names: list[str], verbose: bool = False) -> str:
        """The printed report: P, R, mAP per class (``verbose``), speed and routing."""
        lines = [f"{'class':>20}{'images':>8}{'P':>8}{'R':>8}{'mAP@.5':>9}{'mAP@.5:.95':>12}",
                 f"{'all':>20}{self.images:>8}{self.precision:>8.3f}{self.recall:>8.3f}"
                 f"{self.map50:>9.3f}{self.map:>12.3f}"]
        if verbose:
            for c, r in sorted(self.per_class.items()):
                lines.append(f"{names[int(c)]:>20}{r['n_gt']:>8}{'':>8}{'':>8}{r['ap50']:>9.3f}{r['ap']:>12.3f}")
        s = self.speed_ms
        lines.append(f"Speed: {s['pre']:.1f} ms pre-process, {s['infer']:.1f} ms inference, "
                     f"{s['nms']:.1f} ms NMS per image")
        if self.routing is not None:
            r = self.routing
            easy, hard = r.route_names
            lines.append(f"Routing: {r.easy} {easy}, {r.hard} {hard}, {r.avg_gflops:.2f} GFLOPs per image on average")
            for key, name, d in (("detector1", easy, r.detector1), ("detector2", hard, r.detector2)):
                if d:
                    lines.append(f"  {key} ({name} route): mAP@.5 {d['map50']:.3f}, mAP@.5:.95 {d['map']:.3f}")
        return "\n".join(lines)


def gflops_or_empty(model: Any, img_size: int) -> dict[str, float]:
    """Per-route GFLOPs of ``model`` at ``img_size`` (stored ones for exports; {} if not measurable)."""
    if not isinstance(model, torch.nn.Module):  # ONNX Runtime: GFLOPs stored at export
        return dict(model.gflops)
    try:
        return route_gflops(model, img_size)
    except Exception as e:  # GFLOPs are informative only
        LOGGER.warning("GFLOPs not measured: %s", e)
        return {}


def _scores_both(model: Any) -> bool:
    """Whether both detectors can be scored on every image (dynamic PyTorch models)."""
    return bool(getattr(model, "is_dynamic", False)) and hasattr(model, "forward_both")


def evaluate(model: Any, loader, names: list[str], *, conf_thres: float = VAL.conf_thres,
             iou_thres: float = VAL.iou_thres, max_det: int = VAL.max_det, threshold: float | None = None,
             img_size: int, gflops: dict[str, float] | None = None, time_routed: bool = True,
             plot_dir: Path | None = None, half: bool = False,
             score_calibration: ScoreCalibration | None = None) -> EvalResult:
    """Score ``model`` on every batch of ``loader`` (images, labels, paths, shapes).

    ``threshold`` routes dynamic models (default: the model's own); ``time_routed`` also runs (and times) the routed call
    when both detectors are scored; ``plot_dir`` receives the curves and three batch mosaics;
    ``half`` runs a PyTorch model in fp16 (CUDA) or bf16 autocast (CPU with native bf16);
    ``score_calibration`` maps each route's scores (:mod:`utils.inference.score_calibration`).
    """
    if threshold is None and model.is_dynamic:
        threshold = float(model.threshold)
    predictor = Predictor(model, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, multi_label=True,
                          half=half, score_calibration=score_calibration)
    streams = {"all": DetectionStats(names)}
    if _scores_both(model):  # ONNX exports: routed results only
        streams.update(detector1=DetectionStats(names), detector2=DetectionStats(names))
    acc = _Accumulator(route_names=tuple(model.route_names or ("easy", "hard")))
    for b, (imgs, labels, paths, shapes) in enumerate(tqdm(loader, desc="test", leave=False)):
        batch = _predict(predictor, imgs, threshold, time_routed)
        acc.add(streams, batch, imgs, labels, paths, shapes)
        if plot_dir is not None and b < 3:
            _plot_batch(imgs, labels, paths, batch["routed"].dets, names, plot_dir, b)
    return acc.result(streams, gflops or {}, img_size, plot_dir)


def _predict(predictor: Predictor, imgs, threshold, time_routed) -> dict[str, BatchPrediction]:
    """Routed detections (timed) and, for dynamic models, both detectors' detections."""
    if not _scores_both(predictor.model):
        out = predictor(imgs, threshold)
        return {"routed": out, "all": out}
    d1, d2 = predictor.both(imgs)
    hard = route_mask(d1.phi, threshold)
    routed = predictor(imgs, threshold) if time_routed else None
    merged = [d2.dets[i] if hard[i] else d1.dets[i] for i in range(len(hard))]
    all_ = BatchPrediction(merged, d1.phi, hard, routed.times if routed else d1.times)
    return {"routed": all_, "all": all_, "detector1": d1, "detector2": d2}


def _orig_hw(shape_info, hw) -> tuple[int, int]:
    return tuple(int(v) for v in shape_info[0]) if shape_info is not None else hw


@dataclass
class _Accumulator:
    """Running totals of one pass: times, routes, φ, pixels and the COCO predictions."""

    timing: np.ndarray = field(default_factory=lambda: np.zeros(3))
    routes: list = field(default_factory=list)
    phis: list = field(default_factory=list)
    pixels: int = 0
    route_names: tuple[str, str] = ("easy", "hard")
    paths: list = field(default_factory=list)
    predictions: list = field(default_factory=list)

    def add(self, streams, batch, imgs, labels, paths, shapes) -> None:
        hw = tuple(imgs.shape[2:])
        routed = batch["routed"]
        self.timing += [routed.times.get(k, 0.0) for k in ("pre", "infer", "nms")]
        for key, stats in streams.items():
            for i, det in enumerate(batch[key].dets):
                det = det.clone()
                det[:, :4] = LetterboxTransform.to_original(det[:, :4], hw, shapes[i])
                stats.add(det.cpu().numpy(), ground_truth(labels, i, hw, shapes[i]), _orig_hw(shapes[i], hw))
                if key == "all":
                    self.predictions.append((paths[i], det.cpu().numpy()))
        if routed.hard is not None:
            self.routes.append(routed.hard.cpu())
            self.phis.append(routed.phi.float().cpu())
        self.paths.extend(paths)
        self.pixels += hw[0] * hw[1] * len(paths)

    def result(self, streams, gflops: dict, img_size: int, plot_dir: Path | None) -> EvalResult:
        n = len(self.paths)
        res = streams["all"].compute()
        if plot_dir is not None:
            streams["all"].plot(plot_dir, res)
        scale = self.pixels / (n * img_size ** 2) if n else 1.0  # rect batches cost less than squares
        out = EvalResult(**{k: res[k] for k in (*SCORES, "per_class")}, images=n,
                         speed_ms=dict(zip(("pre", "infer", "nms"), (self.timing / max(n, 1)).tolist())),
                         phi=torch.cat(self.phis).numpy() if self.phis else None, paths=self.paths,
                         streams=streams, predictions=self.predictions)
        if self.routes:
            out.routing = self._routing(streams, gflops, scale)
        elif gflops:
            out.avg_gflops = gflops["all"] * scale
        return out

    def _routing(self, streams, gflops: dict, scale: float) -> RoutingStats:
        n = len(self.paths)
        n_hard = int(torch.cat(self.routes).sum())
        avg = (gflops.get("easy", 0) * (n - n_hard) + gflops.get("hard", 0) * n_hard) / max(n, 1) * scale
        own = {k: {s: streams[k].compute()[s] for s in SCORES} for k in ("detector1", "detector2") if k in streams}
        return RoutingStats(n - n_hard, n_hard, avg, own.get("detector1"), own.get("detector2"), self.route_names)


def _plot_batch(imgs, labels, paths, dets, names, save_dir: Path, b: int) -> None:
    from utils.evaluation.plots import plot_images
    plot_images(imgs, labels, paths, names, save_dir / f"test_batch{b}_labels.jpg")
    plot_images(imgs, [d.cpu() for d in dets], paths, names, save_dir / f"test_batch{b}_pred.jpg")
