"""The routing dial (paper Sec. 3.4, variable-speed inference): thresholds from validation φ.

Convention used everywhere here: the router outputs φ = difficulty in (0, 1), and an image is
hard (goes through backbone 2 and detector 2) when φ > threshold; threshold <= 0 sends every
image to the hard route, threshold >= 1 none (the rule of ``models.route.route_mask``).

Paper, translated to this convention. Eq. 14 gives the largest hard fraction that fits a budget,
``k = (lat_t - lat_1) / (lat_2 - lat_1)``, i.e. the mean cost ``(1 - k) * easy + k * hard``
solved for k. Eq. 15 writes ``τ = percentile(S_val, k)``; since φ > τ means hard here, a hard
fraction k needs the (1 - k) quantile of the validation φ, so the table below is indexed by
the hard percentage k and stores that quantile (a midpoint between neighbouring sorted φ,
so that no validation score sits on the threshold).
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from models.route import route_mask

NO_TABLE = "this checkpoint has no routing calibration; run train_router.py or calibrate first"
SPEC_FORMS = "a threshold number such as 0.35, or 'pK' (K% of images hard, 0 <= K <= 100) such as 'p30'"
_PERCENT_SPEC = re.compile(r"p(\d+(?:\.\d*)?|\.\d+)")

RoutePair = Mapping[str, float] | Sequence[float]


def _scores(phi) -> np.ndarray:
    """φ as a flat float64 array; rejects empty, non-finite or out-of-[0, 1] values."""
    if hasattr(phi, "detach"):
        phi = phi.detach().cpu().numpy()
    s = np.asarray(phi, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("need at least one difficulty score φ")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise ValueError("difficulty scores φ must be finite and within [0, 1]")
    return s


def _percent(k: float) -> float:
    """A hard percentage checked to lie in [0, 100]."""
    k = float(k)
    if not 0 <= k <= 100:
        raise ValueError(f"hard percentage must be within [0, 100], got {k}")
    return k


def _cut_points(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct split of the scores: (hard counts, decreasing; thresholds, increasing)."""
    values, counts = np.unique(s, return_counts=True)
    hard = np.concatenate([[s.size], s.size - np.cumsum(counts)])
    mids = (values[:-1] + values[1:]) / 2
    return hard, np.concatenate([[0.0], mids, [1.0]])


def _nearest_cut(hard: np.ndarray, wanted: int) -> int:
    """Index of the split whose hard count is closest to ``wanted`` (fewer hard on a tie)."""
    gap = np.abs(hard - wanted)
    return int(np.flatnonzero(gap == gap.min())[-1])


def threshold_table(phi, fractions: Iterable[int] = range(0, 101)) -> dict[int, float]:
    """{hard % k: threshold} so that as close as possible to k% of ``phi`` are > threshold.

    k = 0 maps to 1.0 (nothing hard), k = 100 to 0.0 (all hard), others to the midpoint
    between consecutive distinct sorted φ. With ties the nearest achievable count wins
    (the smaller one when two are equally near), so thresholds never increase with k.
    """
    s = _scores(phi)
    hard, cuts = _cut_points(s)
    table = {}
    for k in fractions:
        if float(k) != int(k):
            raise ValueError(f"table fractions are whole percentages, got {k}")
        wanted = math.floor(_percent(k) * s.size / 100 + 0.5)
        table[int(k)] = float(cuts[_nearest_cut(hard, wanted)])
    return table


def table_threshold(table: Mapping, percent: float) -> float:
    """Threshold for ``percent``% hard, interpolated linearly between the table's entries."""
    if not table:
        raise ValueError(NO_TABLE)
    percent = _percent(percent)
    keys = sorted(float(k) for k in table)
    if not keys[0] <= percent <= keys[-1]:
        raise ValueError(f"p{percent:g} is outside the calibrated range p{keys[0]:g}..p{keys[-1]:g}")
    by_key = {float(k): float(v) for k, v in table.items()}
    return float(np.interp(percent, keys, [by_key[k] for k in keys]))


def fraction_for_budget(target: float, easy: float, hard: float, unit: str = "ms") -> float:
    """Eq. 14: largest hard fraction k with (1 - k) * easy + k * hard <= target, in [0, 1]
    (a mean latency in ms, or a mean cost in GFLOPs: ``unit`` names it in errors); 1.0 above ``hard``."""
    target, easy, hard = float(target), float(easy), float(hard)
    if not all(math.isfinite(v) for v in (target, easy, hard)) or easy < 0:
        raise ValueError(f"budget, easy and hard costs must be finite and >= 0 ({unit})")
    if hard <= easy:
        raise ValueError(f"the hard route ({hard:g} {unit}) must cost more than the easy one ({easy:g} {unit})")
    if target < easy:
        raise ValueError(f"target {target:g} {unit} is below the easy route; achievable: "
                         f"{easy:g}..{hard:g} {unit} (anything above {hard:g} means all hard)")
    return min(1.0, (target - easy) / (hard - easy))


def hard_fraction(phi, threshold: float) -> float:
    """Fraction of ``phi`` routed hard at ``threshold`` (φ > threshold; <= 0 all, >= 1 none)."""
    return float(route_mask(torch.from_numpy(_scores(phi)), threshold).double().mean())


def stability_report(table: Mapping, phi_heldout,
                     fractions: Iterable[float] = (10, 30, 50, 70, 90)) -> dict[float, float]:
    """{target hard % k: fraction of held-out φ above the table's threshold for k}."""
    return {k: hard_fraction(phi_heldout, table_threshold(table, k)) for k in fractions}


def _pair(costs: RoutePair | None, name: str) -> tuple[float, float] | None:
    """(easy, hard) from a {'easy', 'hard'} mapping or a 2-sequence; None stays None."""
    if costs is None:
        return None
    if isinstance(costs, Mapping):
        if "easy" not in costs or "hard" not in costs:
            raise ValueError(f"{name} needs 'easy' and 'hard' entries, got {sorted(costs)}")
        return float(costs["easy"]), float(costs["hard"])
    if len(costs) != 2:
        raise ValueError(f"{name} needs (easy, hard), got {len(costs)} values")
    return float(costs[0]), float(costs[1])


def calibration_record(phi, easy_ms: float | None = None, hard_ms: float | None = None,
                       easy_gflops: float | None = None, hard_gflops: float | None = None,
                       img_size: int | None = None, n_images: int | None = None,
                       images: Iterable[str] | None = None) -> dict:
    """Plain-python dict for a checkpoint's ``thresholds`` entry (table plus route costs).

    Route costs are stored as {'easy', 'hard'} or None when not measured; ``n_images``
    defaults to the number of scores. ``images``: the calibration images' paths, stored as
    :func:`images_digest` (so that a report on the same images can say they are those).
    """
    s = _scores(phi)
    return {
        "table": threshold_table(s),
        "latency_ms": _cost_entry(easy_ms, hard_ms, "latency"),
        "gflops": _cost_entry(easy_gflops, hard_gflops, "GFLOPs"),
        "img_size": None if img_size is None else int(img_size),
        "n_images": int(s.size if n_images is None else n_images),
        "images_digest": None if images is None else images_digest(images),
    }


def images_digest(paths: Iterable[str]) -> str:
    """A short fingerprint of a set of image files (their resolved paths, order ignored)."""
    names = sorted(str(Path(p).resolve()) for p in paths)
    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]


def _cost_entry(easy: float | None, hard: float | None, name: str) -> dict[str, float] | None:
    """{'easy': e, 'hard': h} as floats, or None when neither is given."""
    if easy is None and hard is None:
        return None
    if easy is None or hard is None:
        raise ValueError(f"give both easy and hard {name}, or neither")
    return {"easy": float(easy), "hard": float(hard)}


def _stored(calibration: Mapping | None, key: str):
    """``calibration[key]`` or None (also when there is no calibration)."""
    return (calibration or {}).get(key)


def _budget_threshold(calibration: Mapping | None, target: float, costs: RoutePair | None,
                      key: str, unit: str) -> tuple[float, str]:
    """Threshold meeting a mean cost ``target`` (Eq. 14 then the table, Eq. 15)."""
    pair = _pair(costs if costs is not None else _stored(calibration, key), key)
    if pair is None:
        raise ValueError(f"a target in {unit} needs the routes' {unit}: pass them or calibrate with them")
    k = fraction_for_budget(target, *pair, unit)
    threshold = table_threshold(_stored(calibration, "table") or {}, 100 * k)
    return threshold, (f"threshold {threshold:.4g} for target {float(target):g} {unit} "
                       f"({100 * k:.1f}% hard; easy {pair[0]:g}, hard {pair[1]:g} {unit})")


def requested_percent(spec: str | float | None) -> float | None:
    """K of a 'pK' threshold request (K% of images hard), else None."""
    if not isinstance(spec, str):
        return None
    match = _PERCENT_SPEC.fullmatch(spec.strip().lower())
    return float(match.group(1)) if match else None


def _spec_threshold(spec: str | float, calibration: Mapping | None) -> tuple[float, str]:
    """Threshold from a number, a numeric string or a 'pK' percentile string."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        k = requested_percent(text)
        if k is not None:
            threshold = table_threshold(_stored(calibration, "table") or {}, k)
            return threshold, f"threshold {threshold:.4g} ({k:g}% hard on the calibration images)"
        try:
            spec = float(text)
        except ValueError:
            raise ValueError(f"routing threshold {spec!r} not understood; use {SPEC_FORMS}") from None
    if isinstance(spec, bool) or not isinstance(spec, (int, float)) or not math.isfinite(spec):
        raise ValueError(f"routing threshold {spec!r} not understood; use {SPEC_FORMS}")
    return float(spec), f"threshold {float(spec):.4g} (given)"


def resolve_threshold(spec: str | float | None, calibration: Mapping | None, *,
                      target_latency: float | None = None, target_gflops: float | None = None,
                      latencies: RoutePair | None = None, gflops: RoutePair | None = None,
                      default: float = 0.5) -> tuple[float, str]:
    """(threshold, description) from one of: a number, 'pK', a latency or a GFLOPs target.

    ``calibration`` is a :func:`calibration_record` dict (or None). Targets use ``latencies``
    / ``gflops`` ({'easy', 'hard'} or (easy, hard)) or else the costs stored in it. With
    nothing given, ``default`` is returned.
    """
    given = [name for name, v in (("spec", spec), ("target_latency", target_latency),
                                  ("target_gflops", target_gflops)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one way to choose the threshold, got {', '.join(given)}")
    if target_latency is not None:
        return _budget_threshold(calibration, target_latency, latencies, "latency_ms", "ms")
    if target_gflops is not None:
        return _budget_threshold(calibration, target_gflops, gflops, "gflops", "GFLOPs")
    if spec is not None:
        return _spec_threshold(spec, calibration)
    return float(default), f"threshold {float(default):.4g} (default)"
