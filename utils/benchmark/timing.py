"""Benchmark timing: interleaved repetitions and the inference modes compared."""
from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch

from utils.torch_utils import time_sync


def interleaved(fns: Mapping[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of ``reps`` rounds calling every function once, after ``warmup`` untimed rounds.

    Interleaving makes a change of machine load hit every function alike, so ratios between them
    stay meaningful on a busy machine. CUDA work is synchronised before each clock reading.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got {reps} and {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time_sync()
            fn()
            times[k].append((time_sync() - t0) * 1e3)
    return times


def prepare(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """A copy of ``model`` for inference mode ``'fused'`` (plain eager) or ``'fast'`` (the fast path)."""
    if mode not in ("fused", "fast"):
        raise ValueError(f"unknown inference mode {mode!r}")
    m = copy.deepcopy(model)
    return m.fuse() if mode == "fused" else m.optimize_for_inference(keep_freed_memory=False)
