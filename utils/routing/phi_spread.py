"""Whether a trained router's φ still orders images, or has saturated at 0 or 1.

The router's loss (paper Eq. 12) is linear in φ, so long training on images whose better route
is clear drives the logits far from zero and φ to 0 or 1. The ranking in fp32 may survive, but
images whose φ rounds to the same fp16 value (what an fp16 checkpoint or export computes, and
what INT8 exports come close to) can no longer be told apart: the dial then jumps between
hard shares instead of turning smoothly. :func:`spread_warning` says so in one line.
"""
from __future__ import annotations

import numpy as np

SATURATED_LIMIT = 0.2  # more than this share of saturated images warns
EDGE = 1e-3  # φ this close to 0 or 1 counts as saturated when it ties with another image in fp16


def saturated_share(phi) -> float:
    """Share of images whose φ is within ``EDGE`` of 0 or 1 and, rounded to fp16, equals another
    image's (ties in the middle of the range are normal on large sets: fp16 has ~1,000 values
    between 0.5 and 1)."""
    s = np.asarray(phi, dtype=np.float64).reshape(-1)
    if s.size < 2:
        return 0.0
    _, inverse, counts = np.unique(s.astype(np.float16), return_inverse=True, return_counts=True)
    tied = counts[inverse] > 1
    edge = (s < EDGE) | (s > 1 - EDGE)
    return float((tied & edge).mean())


def spread_warning(phi, where: str = "validation images") -> str | None:
    """One line when many images' φ has collapsed onto the same fp16 values at 0 or 1 (None otherwise)."""
    s = np.asarray(phi, dtype=np.float64).reshape(-1)
    share = saturated_share(s)
    if share <= SATURATED_LIMIT:
        return None
    low, high = float((s < EDGE).mean()), float((s > 1 - EDGE).mean())
    return (f"warning: the router's φ has saturated: {100 * share:.0f}% of the {s.size} {where} share their fp16 "
            f"φ with another at 0 or 1 ({100 * low:.0f}% below 0.001, {100 * high:.0f}% above 0.999), so the dial "
            "cannot split them in fp16 weights or exports; train with fewer --steps or a lower --lr, or check that detector 2 "
            "gains anything on this data (test.py --dy-sweep)")
