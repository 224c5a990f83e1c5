"""Loading a model to predict with: the one set-up the API, detect.py and test.py share."""
from __future__ import annotations

from pathlib import Path

import torch

from utils.inference.predictor import check_half
from utils.weights.backends import load_model


def load_for_inference(weights: str | Path, cfg: str | None = None, device: str = "", half: bool = False,
                       fuse: bool = True, keep_freed_memory: bool = False) -> tuple[torch.nn.Module, dict]:
    """``(model, info)`` ready to predict: loaded (any weights or export), ``half`` checked against
    the device (refused on a CPU without native bf16), eval mode, and for PyTorch models (``fuse``)
    fused with the CPU fast path where it applies.

    ``keep_freed_memory`` lets glibc keep freed activations mapped (faster on the CPU, but it
    changes malloc settings for the whole process: :func:`models.fastpath.keep_freed_memory`),
    so only a script that owns its process should ask for it.
    """
    model, info = load_model(weights, cfg=cfg, device=device, half=half)
    if isinstance(model, torch.nn.Module):
        check_half(model, half)  # refused here, not at the first image
        model.eval()
        if fuse and hasattr(model, "optimize_for_inference"):
            model.optimize_for_inference(keep_freed_memory=keep_freed_memory)
    return model, info


def run_precision(model, half: bool) -> str | None:
    """How a loaded model computes when that is not its weights' dtype: 'bf16 autocast' for a
    PyTorch model on the CPU with ``half`` (its weights stay fp32), else None."""
    if half and isinstance(model, torch.nn.Module) and next(model.parameters()).device.type == "cpu":
        return "bf16 autocast"
    return None
