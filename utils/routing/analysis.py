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
from utils.routing.calibration import images_digest
from utils.routing.policy import machine_latency
from utils.routing.score_scale import mixing_warning, sweep_warning

LOGGER = logging.getLogger("dydet.test")


def routing_analysis(result: EvalResult, model: Any, info: Mapping, threshold: float | None,
                     img_size: int, gflops: Mapping[str, float] | None, save_dir: Path, *,
                     dy_sweep: bool = False, plots: bool = True) -> dict[str, Any]:
    """φ plots, threshold stability and (``dy_sweep``) the sweep, whose latency axis is the routes'
    latency on this machine (:func:`utils.routing.policy.machine_latency`); returns what it measured."""
    phi, out, calibration = result.phi, {}, info.get("thresholds") or {}
    if phi is None or not len(phi):
        return out
    if plots:
        report.plot_phi_histogram(phi, save_dir / "phi_histogram.png", threshold)
        report.plot_phi_gallery(phi, result.paths, save_dir / "phi_gallery.jpg")
    _warn_mixing(result)
    stability = report.stability(calibration, phi)
    if stability and calibration.get("images_digest") == images_digest(result.paths):
        print("Threshold stability: these are the images the dial was calibrated on, so pK sends K% of them "
              "hard by construction; check the dial on held-out images")
    elif stability:
        out["stability"] = stability
        print(report.format_stability(stability))
    if dy_sweep:
        s = result.streams
        data = sweep.SweepData(list(s["all"].names), s["all"].gts, s["detector1"].preds, s["detector2"].preds,
                               phi, s["all"].sizes)
        latency, source = machine_latency(model, info, img_size)
        LOGGER.info("route latencies: %s", source)
        out["sweep"] = sweep.run_sweep(data, save_dir, gflops or None, latency, plots=plots)
        print(sweep.format_sweep(out["sweep"]))
        if message := sweep_warning(out["sweep"]["points"]["router"]):
            LOGGER.warning("warning: %s", message)
    return out


def _warn_mixing(result: EvalResult) -> None:
    """One line when the routed result scores clearly below both detectors on all images."""
    r = result.routing
    if r is None or not (r.detector1 and r.detector2) or not (r.easy and r.hard):
        return
    easy, hard = r.route_names
    message = mixing_warning(result.map, {easy: r.detector1["map"], hard: r.detector2["map"]},
                             f"{r.hard} of {r.easy + r.hard} images {hard}")
    if message:
        LOGGER.warning("warning: %s", message)
