"""Per-route score calibration, applied: a detection score means the same precision on both routes.

COCO mAP ranks all of a data set's detections by score, so a routed mix is only as good as the
agreement of its routes' score scales. Each route has a Platt map ``s' = sigmoid(a * logit(s) +
b)`` fitted on validation images (:mod:`utils.routing.score_fit`), after which a score is the
route's estimated precision at that score, on both routes alike. The maps are monotone, so each
route ranks its own detections as before.

:class:`ScoreCalibration` is stored in the checkpoint's routing calibration (``thresholds``, key
``score_calibration``) and applied to the detections after NMS: NMS keeps what the raw scores
give above the raw equivalent of the confidence threshold (:meth:`ScoreCalibration.raw_threshold`),
then the scores are mapped and the threshold applies to the calibrated ones (exact for
single-label NMS, where a detection's score is its best class's).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

EPS = 1e-6


@dataclass(frozen=True)
class ScoreCalibration:
    """A Platt map (a, b) per route name."""

    maps: Mapping[str, tuple[float, float]]

    @classmethod
    def from_record(cls, record: Mapping | None) -> ScoreCalibration | None:
        """From a calibration record (``thresholds``) that holds one, else None."""
        stored = (record or {}).get("score_calibration")
        return cls({k: (float(v[0]), float(v[1])) for k, v in stored.items()}) if stored else None

    def record(self) -> dict[str, list[float]]:
        return {k: [a, b] for k, (a, b) in self.maps.items()}

    def __call__(self, scores: torch.Tensor, route: str) -> torch.Tensor:
        """Calibrated scores of detections of ``route``."""
        a, b = self.maps[route]
        s = scores.double().clamp(EPS, 1 - EPS)
        return torch.sigmoid(a * torch.logit(s) + b).to(scores.dtype)

    def raw_threshold(self, conf: float) -> float:
        """The lowest raw score that any route maps to ``conf`` or above (NMS runs at this)."""
        if conf <= 0:
            return 0.0
        c = min(max(conf, EPS), 1 - EPS)
        raw = [1 / (1 + math.exp(-((math.log(c / (1 - c)) - b) / a))) for a, b in self.maps.values()]
        return min(raw)

    def apply(self, dets: list[torch.Tensor], routes: Sequence[str], conf: float) -> list[torch.Tensor]:
        """Per-image detections (k, 6) after NMS at :meth:`raw_threshold`: scores mapped by each
        image's route, those below ``conf`` dropped, order by score kept."""
        out = []
        for d, route in zip(dets, routes):
            d = d.clone()
            d[:, 4] = self(d[:, 4], route)
            out.append(d[d[:, 4] >= conf])
        return out
