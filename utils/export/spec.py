"""What to export: the graph options every exporter, backend check and parity test reads."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.defaults import IMG_SIZE, PREDICT
from utils.export.onnx_graph import DEFAULT_OPSET

ROUTES = ("both", "easy", "hard")
OPSETS = range(13, 21)  # NonMaxSuppression and opset-13 Squeeze/Unsqueeze; legacy exporter up to 20


@dataclass
class ExportOptions:
    """What to export. ``route='both'`` keeps the routing in the graph (dynamic models)."""

    img_size: tuple[int, int] = (IMG_SIZE, IMG_SIZE)
    batch_size: int = 1
    dynamic_batch: bool = False
    route: str = "both"
    threshold: float = 0.5
    thres_input: bool = True
    end2end: bool = False
    topk_all: int = 100
    iou_thres: float = PREDICT.iou_thres
    conf_thres: float = PREDICT.conf_thres
    opset: int = DEFAULT_OPSET

    def check(self, model: torch.nn.Module) -> None:
        """Raise ValueError for options this model or the exporter cannot honour."""
        stride = int(model.stride.max())
        if any(s <= 0 or s % stride for s in self.img_size):
            raise ValueError(f"--img-size {self.img_size} must be positive multiples of the stride {stride}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.route not in ROUTES:
            raise ValueError(f"--route must be one of {ROUTES}, not {self.route!r}")
        if self.route != "both" and not model.is_dynamic:
            raise ValueError("--route easy|hard needs a dynamic model; a plain model has one route")
        if self.opset not in OPSETS:
            raise ValueError(f"--opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {self.opset}")
        if self.end2end and not (0 <= self.conf_thres <= 1 and 0 <= self.iou_thres <= 1 and self.topk_all >= 1):
            raise ValueError("--end2end needs --conf-thres and --iou-thres in [0, 1] and --topk-all >= 1")

    @property
    def batched(self) -> bool:
        return self.dynamic_batch or self.batch_size > 1

    @property
    def batch_dim(self) -> int | str:
        return "batch" if self.dynamic_batch else self.batch_size
