"""Benchmark timing: interleaved repetitions and the inference modes compared."""
from __future__ import annotations

import copy
import time
from typing import Callable, Mapping

import torch

from utils.torch_utils import time_sync


# Idle time before each timed call when the functions own separate thread pools (ONNX Runtime
# sessions, OpenVINO compiled models): a pool keeps spinning after its call returns, and on a
# 2-core machine the next session's call then runs at about half speed (measured: an ONNX Runtime
# static export at 320 px, 2 threads, 40.5 ms right after another session's call, 21.4 ms after
# 50 ms of idle).
SETTLE_S = 0.05


def interleaved(fns: Mapping[str, Callable[[], object]], reps: int, warmup: int,
                settle_s: float = 0.0) -> dict[str, list[float]]:
    """Milliseconds of ``reps`` rounds calling every function once, after ``warmup`` untimed rounds.

    Interleaving makes a change of machine load hit every function alike, so ratios between them
    stay meaningful on a busy machine. CUDA work is synchronised before each clock reading.
    ``settle_s``: seconds of sleep before each timed call (see ``SETTLE_S``), not counted.
    """
    if reps < 1 or warmup < 0 or settle_s < 0:
        raise ValueError(f"need reps >= 1, warmup >= 0 and settle_s >= 0, got {reps}, {warmup} and {settle_s}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
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
