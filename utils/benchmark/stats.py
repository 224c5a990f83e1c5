"""Pure computations of the benchmark: timing summaries, derived ratios and the goals.

Everything here works on plain numbers (milliseconds, GFLOPs) so it can be tested with fake
timings. A timing summary is ``{"median", "q1", "q3", "min", "max", "n", "times"}`` in ms.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Mapping, Sequence

ROUTES = ("easy", "hard", "plain")


def summarize(times_ms: Sequence[float]) -> dict:
    """Median, quartiles (inclusive method), min and max of repeated timings in ms."""
    t = [float(v) for v in times_ms]
    if not t:
        raise ValueError("no timings to summarize")
    q1, _, q3 = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else (t[0], t[0], t[0])
    return {"median": statistics.median(t), "q1": q1, "q3": q3, "min": min(t), "max": max(t), "n": len(t),
            "times": t}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def gflops_per_s(gflops: float | None, ms: float | None) -> float | None:
    """Achieved GFLOP/s of a call costing ``gflops`` that took ``ms`` milliseconds."""
    return ratio(gflops, None if ms is None else ms / 1e3)


def median(summary: Mapping | None) -> float | None:
    return None if summary is None else summary["median"]


def paired_ratio(num: Sequence[Mapping | None], den: Sequence[Mapping | None]) -> float | None:
    """Median over interleaved rounds of sum(num times) / sum(den times) within each round.

    Each round times every function once, back to back, so a slow drift of the machine's speed
    cancels in each round's ratio: on a noisy machine this is steadier than a ratio of medians.
    Falls back to the ratio of the summed medians when the timings are not paired round by round.
    """
    if any(s is None for s in (*num, *den)):
        return None
    runs = [s.get("times") or [] for s in (*num, *den)]
    n = len(runs[0])
    if n == 0 or any(len(r) != n for r in runs):
        return ratio(sum(median(s) for s in num), sum(median(s) for s in den))
    k = len(num)
    per_round = [sum(r[i] for r in runs[:k]) / sum(r[i] for r in runs[k:]) for i in range(n)]
    return statistics.median(per_round)


def latency_metrics(latency: Mapping[str, Mapping], gflops: Mapping[str, float]) -> dict:
    """GFLOP/s per route (from median latencies); routing overhead (easy / plain) and hard-vs-easy
    GFLOP/s as paired per-round ratios."""
    ms = {r: median(latency.get(r)) for r in ROUTES}
    rate = {r: gflops_per_s(gflops.get(r), ms[r]) for r in ROUTES if ms[r] is not None}
    easy_over_hard = paired_ratio([latency.get("easy")], [latency.get("hard")])
    gflops_ratio = ratio(gflops.get("hard"), gflops.get("easy"))
    return {"gflops_per_s": rate,
            "routing_overhead": paired_ratio([latency.get("easy")], [latency.get("plain")]),
            "hard_vs_easy_gflops_per_s": None if None in (easy_over_hard, gflops_ratio)
            else gflops_ratio * easy_over_hard}


def mixed_metrics(mixed: Mapping, easy_part: Mapping, hard_part: Mapping, batch: int) -> dict:
    """Mixed-batch efficiency: ideal (easy part alone + hard part alone) / mixed batch, per round."""
    ideal = median(easy_part) + median(hard_part)
    return {"ideal_ms": ideal, "efficiency": paired_ratio([easy_part, hard_part], [mixed]),
            "images_per_s": ratio(batch, median(mixed) / 1e3),
            "ideal_images_per_s": ratio(batch, ideal / 1e3)}


def onnx_metrics(ort: Mapping[str, Mapping], eager: Mapping[str, Mapping],
                 fused: Mapping[str, Mapping] | None = None) -> dict:
    """Per route: ONNX Runtime (one-file dynamic export) / eager and / static single-route export.

    ``eager`` is timed with the ONNX runners; ``fused`` (optional) is the plain-eager latency of
    the latency section, measured earlier in the same run.
    """
    out = {}
    for route in ("easy", "hard"):
        dyn = median(ort.get(f"dynamic_{route}"))
        out[route] = {"dynamic_vs_eager": ratio(dyn, median(eager.get(route))),
                      "static_vs_eager": ratio(median(ort.get(f"static_{route}")), median(eager.get(route))),
                      "dynamic_vs_static": ratio(dyn, median(ort.get(f"static_{route}"))),
                      "dynamic_vs_fused_eager": ratio(dyn, median((fused or {}).get(route)))}
    return out


def router_metrics(steps: Mapping[int, Mapping], collect: Mapping[int, Mapping] | None = None) -> dict:
    """Images/s per batch size (from the median step time) and the speed-up over batch 1.

    ``collect``: timings of the one-off sample pass per batch size, reported as images/s.
    """
    ips = {int(b): ratio(int(b), median(s) / 1e3) for b, s in steps.items()}
    out = {"images_per_s": ips, "speedup_vs_batch1": {b: ratio(v, ips.get(1)) for b, v in ips.items()}}
    if collect:
        out["collect_images_per_s"] = {int(b): ratio(int(b), median(s) / 1e3) for b, s in collect.items()}
    return out


# ---- goals: latency, overhead, mixed batches, ONNX, router training -----------------------------------------------------------------------
GOALS = (
    # (key, description, comparison, target)
    ("routing_overhead", "Dy easy route / plain model latency", "<=", 1.02),
    ("hard_vs_easy_gflops_per_s", "hard-route GFLOP/s / easy-route GFLOP/s", ">=", 0.9),
    ("easy_gflops_per_s_640", "easy-route GFLOP/s at 640 px", ">=", 250.0),
    ("onnx_vs_eager", "ONNX Runtime (dynamic export) / eager fast path, worst route", "<=", 0.65),
    ("onnx_vs_fused_eager", "ONNX Runtime (dynamic export) / plain fused eager, worst route", "<=", 0.65),
    ("onnx_dynamic_vs_static", "dynamic export / static single-route export, worst route", "<=", 1.03),
    ("mixed_efficiency", "mixed-batch throughput / ideal", ">=", 0.95),
    ("router_speedup", "router-training images/s at batch >= 16 / batch 1", ">=", 5.0),
)


def goal_values(cfg_record: Mapping, mode: str) -> dict[str, float | None]:
    """The value of each goal for one config (latency goals from ``mode``)."""
    lat = cfg_record.get("modes", {}).get(mode, {}).get("metrics", {})
    onnx = cfg_record.get("onnx", {}).get("metrics") or {}
    router = cfg_record.get("router_training", {}).get("metrics") or {}
    big = [v for b, v in router.get("speedup_vs_batch1", {}).items() if int(b) >= 16 and v is not None]
    easy_rate = lat.get("gflops_per_s", {}).get("easy")
    return {
        "routing_overhead": lat.get("routing_overhead"),
        "hard_vs_easy_gflops_per_s": lat.get("hard_vs_easy_gflops_per_s"),
        "easy_gflops_per_s_640": easy_rate if cfg_record.get("img_size") == 640 else None,
        "onnx_vs_eager": _worst([r.get("dynamic_vs_eager") for r in onnx.values()], max),
        "onnx_vs_fused_eager": _worst([r.get("dynamic_vs_fused_eager") for r in onnx.values()], max),
        "onnx_dynamic_vs_static": _worst([r.get("dynamic_vs_static") for r in onnx.values()], max),
        "mixed_efficiency": (cfg_record.get("mixed_batch") or {}).get("metrics", {}).get("efficiency"),
        "router_speedup": max(big) if big else None,
    }


def _worst(values: list, pick) -> float | None:
    values = [v for v in values if v is not None]
    return pick(values) if values else None


def check_goals(cfg_records: Sequence[Mapping], mode: str, extra: Callable[[dict], list] | None = None) -> list[dict]:
    """One row per (config, goal) that was measured: value, target and whether it is met.

    The goals of :data:`GOALS` and the rows ``extra(record)`` adds as (key, description, op,
    target, value), e.g. the deployment goals of :func:`utils.benchmark.deploy.deploy_goals`.
    """
    rows = []
    for rec in cfg_records:
        values = goal_values(rec, mode)
        measured = [(key, text, op, target, values[key]) for key, text, op, target in GOALS]
        for key, text, op, target, v in measured + (extra(dict(rec)) if extra else []):
            if v is not None:
                met = v <= target if op == "<=" else v >= target
                rows.append({"cfg": rec["cfg"], "img_size": rec["img_size"], "goal": key, "description": text,
                             "value": v, "target": f"{op} {target:g}", "met": met})
    return rows
