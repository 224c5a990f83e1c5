"""What test.py reports about a dynamic model's routing after an evaluation pass.

The φ histogram and gallery, the stability of the calibrated dial on the evaluated images and,
on request, the accuracy-speed sweep (every hard fraction from the same pass).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.evaluation.evaluate import EvalResult
from utils.routing import report, sweep
from utils.routing.latency import inference_copy, route_latency

LOGGER = logging.getLogger("dydet.test")


def needs_latency(calibration: Mapping | None, target_latency: float | None) -> bool:
    """A latency target without stored route latencies: they must be measured on this machine."""
    return target_latency is not None and not (calibration or {}).get("latency_ms")


def measured_latency(model: Any, img_size: int) -> dict[str, float]:
    """Both routes' batch-1 latency (ms) at ``img_size`` on this machine."""
    latency = route_latency(inference_copy(model), img_size)
    LOGGER.info("measured route latencies at %d px: easy %.1f ms, hard %.1f ms", img_size,
                latency["easy"], latency["hard"])
    return latency


def routing_analysis(result: EvalResult, model: Any, calibration: Mapping | None, threshold: float | None,
                     img_size: int, gflops: Mapping[str, float] | None, save_dir: Path, *,
                     dy_sweep: bool = False, plots: bool = True) -> dict[str, Any]:
    """φ plots, threshold stability and (``dy_sweep``) the sweep; returns what it measured."""
    phi, out = result.phi, {}
    if phi is None or not len(phi):
        return out
    if plots:
        report.plot_phi_histogram(phi, save_dir / "phi_histogram.png", threshold)
        report.plot_phi_gallery(phi, result.paths, save_dir / "phi_gallery.jpg")
    stability = report.stability(calibration, phi)
    if stability:
        out["stability"] = stability
        print(report.format_stability(stability))
    if dy_sweep:
        s = result.streams
        data = sweep.SweepData(list(s["all"].names), s["all"].gts, s["detector1"].preds, s["detector2"].preds,
                               phi, s["all"].sizes)
        out["sweep"] = sweep.run_sweep(data, save_dir, gflops or None, measured_latency(model, img_size), plots=plots)
        print(sweep.format_sweep(out["sweep"]))
    return out
