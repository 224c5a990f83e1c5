"""Wall-clock timing of model calls: warm-up, repetitions, median (device-synchronised)."""
from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from functools import partial

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


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy prepared the way inference runs it (fused, CPU fast path where it applies)."""
    m = copy.deepcopy(model).eval()
    return m.optimize_for_inference()


def _example_input(model, img_size: int, batch_size: int) -> torch.Tensor:
    """Random images as ``model`` takes them: its device and dtype (PyTorch), its fixed size (exports)."""
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters())
        return torch.rand(batch_size, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    h, w = getattr(model, "img_size", (img_size, img_size))
    return torch.rand(batch_size, 3, h, w)


@torch.inference_mode()
def route_latency(model, img_size: int, reps: int = 5, warmup: int = 2, batch_size: int = 1) -> dict[str, float]:
    """Median ms per batch of each route of a dynamic model (PyTorch or an export that takes its
    threshold as an input): {'easy', 'hard'}, forced with threshold 1 and 0.

    The routes are timed in turns (easy, hard, easy, ...) so that a load on the machine that comes
    and goes falls on both alike. The hard route does the easy route's work and more, so a hard
    median at or below the easy one is noise: the measurement is repeated (twice at most, with
    twice the repetitions each time) before it is returned as it is.
    """
    if not model.is_dynamic:
        raise ValueError("route latencies need a dynamic model")
    if not model.threshold_input:
        raise ValueError(f"{model.file_name} has its routing threshold built in, so its routes cannot be timed "
                         "apart; export it with --thres-input")
    x = _example_input(model, img_size, batch_size)
    was_training = model.training
    model.eval()
    try:
        for attempt in range(3):
            ms = _routes_in_turns(model, x, reps * 2 ** attempt, warmup)
            if ms["hard"] > ms["easy"]:
                break
        return ms
    finally:
        model.train(was_training)


def _routes_in_turns(model, x: torch.Tensor, reps: int, warmup: int) -> dict[str, float]:
    """Median ms of each route, its calls interleaved with the other route's."""
    calls = {route: partial(model, x, threshold=thr) for route, thr in (("easy", 1.0), ("hard", 0.0))}
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {route: [] for route in calls}
    for _ in range(reps):
        for route, fn in calls.items():
            times[route] += time_call(fn, reps=1, warmup=0)
    return {route: statistics.median(t) for route, t in times.items()}


def route_costs(model: torch.nn.Module, img_size: int, reps: int = 5) -> dict[str, float]:
    """Fused GFLOPs and (``reps`` > 0) batch-1 latency in ms, as inference runs, of both routes,
    as :func:`calibration_record` keywords. A route's costs include its router's."""
    from models.flops import route_gflops
    gflops = route_gflops(model, img_size)
    costs = {"easy_gflops": gflops["easy"], "hard_gflops": gflops["hard"]}
    if reps > 0:
        latency = route_latency(inference_copy(model), img_size, reps=reps)
        costs.update(easy_ms=latency["easy"], hard_ms=latency["hard"])
    return costs
