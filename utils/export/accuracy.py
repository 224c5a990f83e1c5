"""An export's accuracy next to its PyTorch model: per route, φ ranking, the dial, the sweep.

What INT8 (or bf16) must keep: each route's mAP@.5:.95 within 0.01 of fp32, the
router's ranking of the images (Spearman rank correlation of φ >= 0.99), so the calibrated dial
still gives its hard fractions (``p50`` -> 50 ± 5%), and the accuracy-speed sweep.

:func:`route_pass` runs a model over a loader once per route (threshold 1: every image easy;
0: every image hard) through :func:`utils.evaluation.evaluate.evaluate`, the scoring of test.py,
and keeps both routes' detections with φ as a :class:`utils.routing.sweep.SweepData`. A dynamic
PyTorch model scores both detectors in one pass. :func:`static_pair_pass` does the same for two
single-route exports (``export.py --route easy`` / ``--route hard``, e.g. ONNX Runtime INT8),
whose φ comes from the easy export's ``phi`` output. :func:`compare` puts two passes side by side.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from utils.evaluation.evaluate import evaluate
from utils.routing.calibration import stability_report
from utils.routing.sweep import SWEEP_PERCENTS, SweepData, policy_auc, random_points, router_points

DIAL_PERCENTS = (10, 30, 50, 70, 90)
ROUTE_THRESHOLDS = {"easy": 1.0, "hard": 0.0}


@dataclass
class RoutePass:
    """Both routes' detections and φ of one model on every image, and each route's scores."""

    name: str
    data: SweepData
    scores: dict[str, dict[str, float]]  # route -> {"map", "map50"}


def _scores(result) -> dict[str, float]:
    return {"map": float(result.map), "map50": float(result.map50)}


def route_pass(model: Any, loader, names: Sequence[str], img_size: int, name: str = "model") -> RoutePass:
    """Every image through each route of a dynamic ``model`` (PyTorch, ONNX Runtime, OpenVINO)."""
    if not model.is_dynamic:
        raise ValueError(f"{name}: route_pass needs a dynamic model (both routes); use static_pair_pass")
    names = list(names)
    easy = evaluate(model, loader, names, threshold=1.0, img_size=img_size, time_routed=False)
    streams = easy.streams
    if "detector2" in streams:  # PyTorch: both detectors scored in the same pass
        d1, d2 = streams["detector1"], streams["detector2"]
        scores = {"easy": dict(easy.routing.detector1), "hard": dict(easy.routing.detector2)}
    else:
        hard = evaluate(model, loader, names, threshold=0.0, img_size=img_size)
        d1, d2 = streams["all"], hard.streams["all"]
        scores = {"easy": _scores(easy), "hard": _scores(hard)}
    scores = {r: {k: float(s[k]) for k in ("map", "map50")} for r, s in scores.items()}
    data = SweepData(names, d1.gts, d1.preds, d2.preds, np.asarray(easy.phi, np.float64), d1.sizes)
    return RoutePass(name, data, scores)


def static_pair_pass(easy_model: Any, hard_model: Any, loader, names: Sequence[str], img_size: int,
                     name: str = "static pair") -> RoutePass:
    """Two single-route exports of one dynamic model as one :class:`RoutePass` (φ: the easy export's)."""
    names = list(names)
    easy = evaluate(easy_model, loader, names, img_size=img_size)
    hard = evaluate(hard_model, loader, names, img_size=img_size)
    d1, d2 = easy.streams["all"], hard.streams["all"]
    phi = static_phi(easy_model, loader)
    data = SweepData(names, d1.gts, d1.preds, d2.preds, phi, d1.sizes)
    return RoutePass(name, data, {"easy": _scores(easy), "hard": _scores(hard)})


def static_phi(model: Any, loader) -> np.ndarray:
    """The ``phi`` output of a single-route ONNX export (run by ONNX Runtime) on every image."""
    if "phi" not in getattr(model, "output_names", ()):
        raise ValueError(f"{model} has no 'phi' output")
    out = []
    for imgs, *_ in loader:
        x = imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()
        step = model.batch or len(x)
        for start in range(0, len(x), step):
            chunk = x[start:start + step].numpy()
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(model.session.run(["phi"], {"images": chunk})[0][:n])
    return np.concatenate(out).astype(np.float64)


# ---- comparison -----------------------------------------------------------------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties get their mean rank)."""
    from scipy.stats import spearmanr
    return float(spearmanr(np.asarray(a), np.asarray(b)).statistic)


def dial(table: Mapping | None, phi: np.ndarray, percents: Sequence[int] = DIAL_PERCENTS) -> dict[int, float] | None:
    """{calibrated hard % k: achieved hard % on these images} with the checkpoint's table."""
    if not table:
        return None
    return {int(k): 100 * f for k, f in stability_report(table, phi, percents).items()}


def sweep(data: SweepData, gflops: Mapping[str, float] | None = None, latency: Mapping[str, float] | None = None,
          percents: Sequence[float] = SWEEP_PERCENTS) -> dict:
    """Router and random points (as dicts) and the AUC-Policy of each (None where undefined)."""
    rows = {"router": router_points(data, gflops, latency, percents),
            "random": random_points(data, gflops, latency, percents)}
    out: dict = {"points": {k: [asdict(p) for p in v] for k, v in rows.items()}}
    for policy, points in rows.items():
        try:
            out[f"auc_policy_{policy}"] = policy_auc(points)
        except ValueError:  # both detectors equally good: Eq. 10 undefined
            out[f"auc_policy_{policy}"] = None
    return out


def compare(ref: RoutePass, other: RoutePass, table: Mapping | None = None, *,
            gflops: Mapping[str, float] | None = None, latency: Mapping[str, Mapping[str, float]] | None = None,
            percents: Sequence[float] = SWEEP_PERCENTS) -> dict:
    """``other`` against ``ref``: per-route mAP and its change, φ rank correlation, max |Δφ|, the
    dial's hard fractions (``table``: the checkpoint's calibration table) and both sweeps.
    ``latency``: {pass name: {route: ms}} for the sweeps' latency axis."""
    latency = latency or {}
    routes = {r: {"ref": ref.scores[r]["map"], "other": other.scores[r]["map"],
                  "delta": other.scores[r]["map"] - ref.scores[r]["map"],
                  "ref_map50": ref.scores[r]["map50"], "other_map50": other.scores[r]["map50"]}
              for r in ROUTE_THRESHOLDS}
    a, b = ref.data.phi, other.data.phi
    return {"ref": ref.name, "other": other.name, "images": int(a.size), "routes": routes,
            "phi": {"spearman": spearman(a, b), "max_abs_diff": float(np.abs(a - b).max())},
            "dial": {"ref": dial(table, a), "other": dial(table, b)},
            "sweep": {"ref": sweep(ref.data, gflops, latency.get(ref.name), percents),
                      "other": sweep(other.data, gflops, latency.get(other.name), percents)}}


GOALS = {"map_delta": 0.01, "spearman": 0.99, "dial_p50": 5.0}


def goals(comparison: Mapping) -> dict[str, dict]:
    """The issue's accuracy goals for one comparison: value, target, met."""
    worst = max(abs(r["delta"]) for r in comparison["routes"].values())
    rho = comparison["phi"]["spearman"]
    dial_other = comparison["dial"]["other"] or {}
    p50 = dial_other.get(50)
    return {"map_delta": {"value": worst, "target": f"<= {GOALS['map_delta']:g}", "met": worst <= GOALS["map_delta"]},
            "spearman": {"value": rho, "target": f">= {GOALS['spearman']:g}", "met": rho >= GOALS["spearman"]},
            "dial_p50": {"value": p50, "target": "50 ± 5 %",
                         "met": None if p50 is None else abs(p50 - 50) <= GOALS["dial_p50"]}}


def format_goals(goal_rows: Mapping[str, Mapping]) -> str:
    """One line: each accuracy goal's value, target and whether it is met."""
    parts = [f"{k} {_f(v['value'], 4)} ({v['target']}: {'met' if v['met'] else 'NOT met'})" for k, v in goal_rows.items()]
    return "Goals: " + "; ".join(parts) + "."


# ---- markdown -------------------------------------------------------------------------------------
def _f(v: float | None, d: int = 3) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def format_comparison(c: Mapping) -> str:
    """Markdown: per-route mAP, φ agreement, dial, and both sweeps with their AUC-Policy."""
    lines = [f"### {c['other']} vs {c['ref']} ({c['images']} images)", "",
             "| route | mAP@.5:.95 " + c["ref"] + " | mAP@.5:.95 " + c["other"] + " | Δ | mAP@.5 " + c["ref"]
             + " | mAP@.5 " + c["other"] + " |", "|---|---|---|---|---|---|"]
    for r, v in c["routes"].items():
        lines.append(f"| {r} | {_f(v['ref'])} | {_f(v['other'])} | {v['delta']:+.4f} | {_f(v['ref_map50'])} | "
                     f"{_f(v['other_map50'])} |")
    phi = c["phi"]
    lines += ["", f"φ: Spearman {phi['spearman']:.5f}, max |Δφ| {phi['max_abs_diff']:.2e}."]
    ref_dial, other_dial = c["dial"]["ref"], c["dial"]["other"]
    if other_dial:
        pairs = ", ".join(f"p{k} -> {ref_dial[k]:.1f}% / {other_dial[k]:.1f}%" for k in other_dial)
        lines.append(f"Calibrated dial (hard %, {c['ref']} / {c['other']}): {pairs}.")
    lines += ["", _sweep_table(c)]
    return "\n".join(lines)


def _sweep_table(c: Mapping) -> str:
    ref, other = c["sweep"]["ref"], c["sweep"]["other"]
    pts = {k: s["points"]["router"] for k, s in (("ref", ref), ("other", other))}
    header = "| hard % | " + " | ".join(f"{100 * p['hard_fraction']:.0f}" for p in pts["ref"]) + " | AUC-Policy |"
    lines = [header, "|---|" + "---|" * (len(pts["ref"]) + 1)]
    for key, label in (("ref", c["ref"]), ("other", c["other"])):
        s = c["sweep"][key]
        lines.append(f"| router mAP@.5:.95, {label} | " + " | ".join(_f(p["map"]) for p in pts[key])
                     + f" | {_f(s['auc_policy_router'])} |")
        lines.append(f"| random, {label} | " + " | ".join(_f(p["map"]) for p in s["points"]["random"])
                     + f" | {_f(s['auc_policy_random'])} |")
        ms = [p["latency_ms"] for p in pts[key]]
        if all(np.isfinite(ms)):
            lines.append(f"| ms per image, {label} | " + " | ".join(f"{v:.1f}" for v in ms) + " | |")
    return "\n".join(lines)
