"""Options several scripts share, each declared once: the device, the run folder, NMS and routing.

A script's :class:`Options` dataclass uses these as field defaults (``device: str =
option_groups.device()``), so a flag has one name, one help text and one meaning everywhere;
only a default that differs by script (NMS thresholds for prediction or validation, a run
folder's task) is passed in.
"""
from __future__ import annotations

from typing import Any

from utils.defaults import PROJECT, RUN_NAME
from utils.options import option


# ---- device ----------------------------------------------------------------------------------------
def device(default: str = "") -> Any:
    return option(default, "cpu, 0, 0,1 ... (default: CUDA 0 if available)")


def half() -> Any:
    return option(False, "half precision: fp16 on CUDA, bf16 on a CPU with AVX512_BF16/AMX (refused otherwise)")


# ---- run folder: <project>/<name> ------------------------------------------------------------------
def project(task: str) -> Any:
    return option(PROJECT[task], "parent folder of the run folder")


def name() -> Any:
    return option(RUN_NAME, "run folder name (exp, exp2, ... when taken)")


def exist_ok() -> Any:
    return option(False, "reuse an existing run folder")


# ---- NMS ---------------------------------------------------------------------------------------------
def conf_thres(default: float) -> Any:
    return option(default, "confidence threshold")


def iou_thres(default: float) -> Any:
    return option(default, "NMS IoU threshold")


def max_det(default: int) -> Any:
    return option(default, "maximum detections per image")


# ---- routing (utils.routing.policy) -------------------------------------------------------------
def dy_thres() -> Any:
    return option(None, "routing threshold of dynamic models: a number in [0, 1], or pK = K%% hard images "
                        "(from the checkpoint's calibration)")


def target_gflops() -> Any:
    return option(None, "choose the threshold for this average cost (GFLOPs per image)")


def target_latency() -> Any:
    return option(None, "choose the threshold for this mean latency (ms per image), with the routes' latencies on "
                        "this machine and backend (measured once, then cached)")


def remeasure_latency() -> Any:
    return option(False, "--target-latency: measure the routes' latencies again")


def raw_scores() -> Any:
    return option(False, "dynamic models: the routes' raw scores, without the per-route score calibration "
                         "the checkpoint may hold")
