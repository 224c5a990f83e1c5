"""The one inference path: batch pre-processing, model call (routed or both detectors), NMS.

detect.py, test.py and the Python API go through :class:`Predictor`, so images are normalised,
routed and suppressed the same way everywhere (the benchmark times the models themselves).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from utils.cpu import require_bf16
from utils.defaults import PREDICT
from utils.inference.nms import non_max_suppression
from utils.inference.score_calibration import ScoreCalibration
from utils.inference.transform import LetterboxTransform
from utils.torch_utils import time_sync


@dataclass
class BatchPrediction:
    """Detections per image in network-input pixels, with routing and timing (ms per batch)."""

    dets: list[torch.Tensor]
    phi: torch.Tensor | None = None
    hard: torch.Tensor | None = None
    times: dict[str, float] = field(default_factory=dict)


def check_half(model, half: bool) -> None:
    """Refuse ``half`` for a PyTorch model on a CPU without native bf16 (ValueError naming the flag)."""
    p = next(model.parameters(), None) if half and hasattr(model, "parameters") else None
    if p is not None and p.device.type == "cpu":
        require_bf16(what="--half on the CPU (bf16 autocast)")


class Predictor:
    """Wraps a detector (plain or dynamic) with its pre- and post-processing."""

    def __init__(self, model: torch.nn.Module, *, conf_thres: float = PREDICT.conf_thres,
                 iou_thres: float = PREDICT.iou_thres, classes: Sequence[int] | None = None,
                 agnostic_nms: bool = False, max_det: int = PREDICT.max_det, multi_label: bool = False,
                 half: bool = False, score_calibration: ScoreCalibration | None = None) -> None:
        self.model = model.eval()
        self.scores = score_calibration if model.is_dynamic and not model.end2end else None  # per-route maps
        p = next(model.parameters(), None) if hasattr(model, "parameters") else None
        device = p.device if p is not None else torch.device(getattr(model, "device", "cpu"))  # e.g. ONNX Runtime
        self.device = device
        self.half = bool(half and device.type == "cuda" and p is not None)  # fp16 weights and inputs
        self.bf16 = bool(half and device.type == "cpu" and p is not None)  # bf16 autocast, fp32 weights
        if self.half:
            self.model.half()
        check_half(model, half)
        self.conf_thres = conf_thres
        raw_conf = self.scores.raw_threshold(conf_thres) if self.scores is not None else conf_thres
        self.nms_kwargs = dict(conf_thres=raw_conf, iou_thres=iou_thres, classes=classes,
                               agnostic_nms=agnostic_nms, max_det=max_det, multi_label=multi_label)

    def _forward(self, fn, x: torch.Tensor):
        """``fn(x)``, under bf16 autocast when asked for on the CPU."""
        if not self.bf16:
            return fn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(x)

    @property
    def is_dynamic(self) -> bool:
        return bool(self.model.is_dynamic)

    def preprocess(self, imgs: torch.Tensor) -> torch.Tensor:
        """uint8 (b, 3, h, w) RGB -> float in [0, 1] on the model's device (fp16 weights: fp16)."""
        return LetterboxTransform.normalize(imgs, self.device, self.half)

    def _float(self, pred):
        """bf16 predictions back to fp32 for NMS (boxes keep fp32 coordinates)."""
        if not self.bf16:
            return pred
        return [p.float() for p in pred] if isinstance(pred, (list, tuple)) else pred.float()

    def postprocess(self, pred: torch.Tensor | list[torch.Tensor], routes: Sequence[str] | None = None
                    ) -> list[torch.Tensor]:
        """NMS, unless the model already did it (end-to-end exports return per-image detections);
        with a score calibration, each image's scores mapped by its route (``routes``)."""
        if self.model.end2end:
            return list(pred)
        dets = non_max_suppression(pred, **self.nms_kwargs)
        if self.scores is None or routes is None:
            return dets
        return self.scores.apply(dets, routes, self.conf_thres)

    def _routes(self, hard: torch.Tensor) -> list[str]:
        easy, hard_name = self.model.route_names
        return [hard_name if h else easy for h in hard.tolist()]

    @torch.inference_mode()
    def __call__(self, imgs: torch.Tensor, threshold: float | None = None) -> BatchPrediction:
        """Routed inference of one batch (dynamic models use ``threshold`` or their own)."""
        t0 = time_sync()
        x = self.preprocess(imgs)
        t1 = time_sync()
        if self.is_dynamic:
            out = self._forward(lambda t: self.model(t, threshold=threshold), x)
            pred, phi, hard = self._float(out.pred), self._float(out.phi), out.hard
        else:
            pred, phi, hard = self._float(self._forward(self.model, x)), None, None
        t2 = time_sync()
        dets = self.postprocess(pred, self._routes(hard) if hard is not None else None)
        t3 = time_sync()
        times = {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "nms": (t3 - t2) * 1e3}
        return BatchPrediction(dets, phi, hard, times)

    @torch.inference_mode()
    def both(self, imgs: torch.Tensor) -> tuple[BatchPrediction, BatchPrediction]:
        """Detector 1 and detector 2 on every image (dynamic models), for scoring and sweeps."""
        x = self.preprocess(imgs)
        t1 = time_sync()
        out = self._forward(self.model.forward_both, x)
        t2 = time_sync()
        easy, hard = self.model.route_names
        n = len(x)
        d1 = self.postprocess(self._float(out.pred1), [easy] * n)
        d2 = self.postprocess(self._float(out.pred2), [hard] * n)
        t3 = time_sync()
        times = {"infer": (t2 - t1) * 1e3, "nms": (t3 - t2) * 1e3 / 2}
        return BatchPrediction(d1, out.phi, None, times), BatchPrediction(d2, out.phi, None, times)
