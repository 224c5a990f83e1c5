"""Every default of the command line, the scripts' ``run(...)`` and the Python API, once.

The scripts' option dataclasses, their flags and :class:`dydet.DyDet` all read this table, so
a default changes in one place. Thresholds come in two sets: ``PREDICT`` for detecting (what a
user sees) and ``VAL`` for scoring (low confidence, so the whole precision-recall curve counts).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Thresholds:
    """Confidence and NMS settings of one task."""

    conf_thres: float
    iou_thres: float
    max_det: int = 300


PREDICT = Thresholds(conf_thres=0.25, iou_thres=0.45)
VAL = Thresholds(conf_thres=0.001, iou_thres=0.65)

# Input size when neither the caller nor the checkpoint (its training size) gives one.
IMG_SIZE = 640
# Box line width in annotated images; None: from the image size.
LINE_THICKNESS: int | None = None

# The shipped demo model (a zoo name: found in the repository's weights/ from any working
# directory) and its sample images: what detect.py and DyDet use when given nothing.
DEMO_WEIGHTS = "demo-dy-yolov7-tiny.pt"
DEMO_SOURCE = REPO / "data" / "images"

# Where each script's runs go: <project>/<name>, with an incremented name unless --exist-ok.
PROJECT = {
    "detect": "runs/detect", "test": "runs/test", "train": "runs/train",
    "train_router": "runs/train_router", "benchmark": "runs/benchmark",
}
RUN_NAME = "exp"

# Batch sizes and loader workers.
BATCH = {"detect": 1, "test": 32, "train": 16, "train_router": 8}
WORKERS = 8


@dataclass(frozen=True)
class RouterTraining:
    """Stage 2 of DynamicDet (paper Sec. 3.3): AdamW at a constant learning rate, on cached samples.

    The schedule is counted in optimizer steps, so that it learns on small data as on large:
    ``steps`` in all, in epochs that pass over at least ``epoch_samples`` samples (a small data
    set several times), at least two epochs, stopping early after ``patience`` epochs without a
    better validation routed loss. Measured on the demo data (800 training images): the paper's
    2 epochs at 1e-5 leave the router where it started (held-out AUC-Policy 0.517 vs random
    0.515); 50k steps at 1e-4 reach 0.648. The paper's COCO recipe is ``--epochs 2 --lr 1e-5
    --batch-size 1``.
    """

    steps: int = 50_000
    epoch_samples: int = 4_000
    min_epochs: int = 2
    patience: int = 20
    logit_decay: float = 0.01
    lr: float = 1e-4
    weight_decay: float = 5e-3


ROUTER = RouterTraining()


@dataclass(frozen=True)
class DualResTraining:
    """The DualRes router (paper Sec. 3.1.2): SGD with Nesterov momentum, cosine lr, 40 epochs.

    The paper gives no values for the Gumbel temperature τ, the balance weight γ or the target
    high-resolution share θ; these are ours.
    """

    epochs: int = 40
    batch_size: int = 64
    lr: float = 3.2e-4
    momentum: float = 0.8
    weight_decay: float = 3.6e-4
    tau: float = 1.0
    gamma: float = 10.0
    theta: float = 0.5
    scale: float = 0.5  # low resolution = scale x the detector's input size (rounded to the stride)


DUALRES = DualResTraining()
