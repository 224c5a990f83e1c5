"""Wall-clock timing of model calls: warm-up, repetitions, median (device-synchronised)."""
from __future__ import annotations

import statistics
from typing import Callable

import torch

from utils.torch_utils import time_sync


def time_call(fn: Callable[[], object], reps: int = 5, warmup: int = 2) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got {reps} and {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time_sync()
        fn()
        times.append((time_sync() - t0) * 1e3)
    return times


@torch.inference_mode()
def route_latency(model: torch.nn.Module, img_size: int, reps: int = 5, warmup: int = 2,
                  batch_size: int = 1) -> dict[str, float]:
    """Median ms per batch of each route of a dynamic model: {'easy', 'hard'} (threshold 1 and 0)."""
    if not getattr(model, "is_dynamic", False):
        raise ValueError("route latencies need a dynamic model")
    p = next(model.parameters())
    x = torch.rand(batch_size, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        return {route: statistics.median(time_call(lambda: model(x, threshold=thr), reps, warmup))
                for route, thr in (("easy", 1.0), ("hard", 0.0))}
    finally:
        model.train(was_training)
