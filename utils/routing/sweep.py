"""Accuracy-speed sweep of a dynamic detector from one pass over the data (paper Fig. 5/7).

Both detectors' detections and φ are computed once per image (``Predictor.both``); the
operating point "k% hard" then takes detector 2's detections on the k% highest-φ images and
detector 1's on the rest, which is exactly what routed inference at that threshold returns.
Random routing (the same hard counts, images drawn at random) is the baseline line, and the
oracle (the images that gain most go hard first, :mod:`utils.routing.oracle`) the ceiling.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from utils.evaluation.metrics import auc_policy
from utils.routing.calibration import threshold_table
from utils.routing.oracle import oracle_points, routing_efficiency, sweep_gain
from utils.routing.sweep_data import SWEEP_PERCENTS, SweepData, SweepPoint, operating_point

__all__ = ["SWEEP_PERCENTS", "SweepData", "SweepPoint", "operating_point", "router_points", "random_points",
           "distinct", "policy_auc", "write_csv", "plot_sweep", "run_sweep", "format_sweep", "MIN_ROUTE_GAP"]

# Below this gap between the all-easy and the all-hard mAP@.5:.95 AUC-Policy is not reported: Eq. 10
# divides by the gap, so noise of a few thousandths would read as a large score either way.
MIN_ROUTE_GAP = 0.005


def router_points(data: SweepData, gflops: Mapping[str, float] | None = None,
                  latency: Mapping[str, float] | None = None,
                  percents: Sequence[float] = SWEEP_PERCENTS) -> list[SweepPoint]:
    """Operating points of the router: k% hard = the k% highest φ (thresholds from these φ)."""
    table = threshold_table(data.phi, [int(k) for k in percents])
    points = []
    for k in percents:
        thr = table[int(k)]
        hard = data.phi > thr if 0 < thr < 1 else np.full(data.phi.shape, thr <= 0)
        points.append(operating_point(data, k, thr, hard, gflops, latency))
    return points


def random_points(data: SweepData, gflops: Mapping[str, float] | None = None,
                  latency: Mapping[str, float] | None = None, percents: Sequence[float] = SWEEP_PERCENTS,
                  repeats: int = 3, seed: int = 0) -> list[SweepPoint]:
    """Random routing with the same hard counts, mAP averaged over ``repeats`` draws."""
    rng = np.random.default_rng(seed)
    n = data.phi.size
    points = []
    for k in percents:
        n_hard = int(np.floor(k * n / 100 + 0.5))
        draws = []
        for _ in range(repeats):
            hard = np.zeros(n, bool)
            hard[rng.choice(n, n_hard, replace=False)] = True
            draws.append(data.score(hard))
        mean = {m: float(np.mean([d[m] for d in draws])) for m in ("map50", "map")}
        points.append(operating_point(data, k, float("nan"), hard, gflops, latency, scores=mean))
    return points


def distinct(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """One point per achieved hard fraction (small datasets can repeat a fraction)."""
    seen, out = set(), []
    for p in points:
        if p.hard_fraction not in seen:
            seen.add(p.hard_fraction)
            out.append(p)
    return out


def policy_auc(points: Sequence[SweepPoint], metric: str = "map") -> float:
    """AUC-Policy (DualRes Eq. 10) of the points, with the hard fraction as the cost axis.

    Mean GFLOPs and latency are affine in the hard fraction, so all three give the same value.
    Raises ValueError when the hard end is not at least ``MIN_ROUTE_GAP`` above the easy end
    (nothing to route for, or a hard route that is worse).
    """
    pts = distinct(points)
    ends = sorted(pts, key=lambda p: p.hard_fraction)
    gap = getattr(ends[-1], metric) - getattr(ends[0], metric) if len(ends) >= 2 else 0.0
    name = {"map": "mAP@.5:.95", "map50": "mAP@.5"}.get(metric, metric)
    if len(ends) >= 2 and gap <= -MIN_ROUTE_GAP:
        raise ValueError(f"the hard route scores {-gap:.4f} {name} below the easy route on these images: "
                         "sending images hard only gives accuracy away here (detector 2 is not the better "
                         "detector on this data; check stage 1), and AUC-Policy assumes the opposite")
    if len(ends) >= 2 and gap < MIN_ROUTE_GAP:
        raise ValueError(f"the hard route changes {name} by only {gap:+.4f} over the easy route (less than "
                         f"{MIN_ROUTE_GAP}): there is nothing for routing to gain on these images, and "
                         "AUC-Policy, which divides by that gap, would be noise")
    return auc_policy([p.hard_fraction for p in pts], [getattr(p, metric) for p in pts])


def write_csv(rows: Mapping[str, Sequence[SweepPoint]], path: Path) -> Path:
    """All points as CSV, one row per (policy, point)."""
    fields = ["policy", *SweepPoint.__dataclass_fields__]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for policy, points in rows.items():
            for p in points:
                writer.writerow({"policy": policy, **asdict(p)})
    return path


def plot_sweep(rows: Mapping[str, Sequence[SweepPoint]], save_dir: Path) -> list[Path]:
    """mAP@.5:.95 against mean GFLOPs and against mean latency, one line per policy."""
    from utils.evaluation.plots import plot_tradeoff
    out = []
    for key, label, name in (("gflops", "GFLOPs per image", "sweep_gflops.png"),
                             ("latency_ms", "latency per image (ms, from measured routes)", "sweep_latency.png")):
        lines = {policy: ([getattr(p, key) for p in pts], [p.map for p in pts]) for policy, pts in rows.items()}
        if all(np.isfinite(x).all() for x, _ in lines.values()):
            out.append(plot_tradeoff(lines, label, "mAP@.5:.95", save_dir / name, title="accuracy-speed sweep"))
    return out


def run_sweep(data: SweepData, save_dir: Path, gflops: Mapping[str, float] | None = None,
              latency: Mapping[str, float] | None = None, percents: Sequence[float] = SWEEP_PERCENTS,
              plots: bool = True) -> dict:
    """Oracle, router and random-routing points, sweep.csv, plots, the AUC-Policy of each and the
    router's routing efficiency (:mod:`utils.routing.oracle`)."""
    gain = sweep_gain(data)
    rows = {"oracle": oracle_points(data, gflops, latency, percents, kind=gain),
            "router": router_points(data, gflops, latency, percents),
            "random": random_points(data, gflops, latency, percents)}
    write_csv(rows, save_dir / "sweep.csv")
    if plots:
        plot_sweep(rows, save_dir)
    out = {"points": {k: [asdict(p) for p in v] for k, v in rows.items()}, "oracle_gain": gain}
    for policy, points in rows.items():
        try:
            out[f"auc_policy_{policy}"] = policy_auc(points)
        except ValueError as e:  # e.g. both detectors equally good: Eq. 10 is undefined
            out[f"auc_policy_{policy}"] = None
            out["auc_policy_note"] = str(e)
    aucs = (out[f"auc_policy_{k}"] for k in ("router", "random", "oracle"))
    out["routing_efficiency"] = routing_efficiency(*aucs)
    return out


def _value(value: float | None, digits: int = 3) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"


def format_sweep(result: Mapping) -> str:
    """A printable table of the router's points beside random's and the oracle's mAP, the AUC-Policy
    of each and the routing efficiency."""
    points = result["points"]
    others = [k for k in ("random", "oracle") if k in points]
    lines = [f"{'hard %':>7}{'threshold':>11}{'mAP@.5':>9}{'mAP@.5:.95':>12}{'GFLOPs':>9}{'ms':>9}"
             + "".join(f"{k + ' mAP@.5:.95':>19}" for k in others)]
    for j, p in enumerate(points["router"]):
        beside = "".join(f"{points[k][j]['map']:>19.3f}" for k in others)
        lines.append(f"{100 * p['hard_fraction']:>7.1f}{p['threshold']:>11.4f}{p['map50']:>9.3f}{p['map']:>12.3f}"
                     f"{p['gflops']:>9.2f}{p['latency_ms']:>9.1f}{beside}")
    auc = [f"{k}: {_value(result[f'auc_policy_{k}'])}" for k in ("router", "random", "oracle")
           if f"auc_policy_{k}" in result]
    efficiency = (f"; routing efficiency {_value(result['routing_efficiency'], 2)}"
                  if "routing_efficiency" in result else "")
    lines.append("AUC-Policy (mAP@.5:.95) " + ", ".join(auc) + efficiency)
    if result.get("oracle_gain") == "own":
        lines.append("oracle: images ordered by their own mAP gain (too many images for contribution gains)")
    if result.get("auc_policy_note"):
        lines.append(f"AUC-Policy undefined: {result['auc_policy_note']}")
    return "\n".join(lines)
