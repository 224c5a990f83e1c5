"""Whether the dial still holds on a video or stream: the running hard share against the 'pK' asked.

A 'pK' threshold sends K% of the *calibration* images hard. Video frames can differ from them
in ways that move φ for every frame alike (compression, resolution, lighting), so the share of
frames routed hard can end up far from K. :class:`HardShareWatch` counts the routes of the
frames seen and says so once, with how to recalibrate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class HardShareWatch:
    """Counts frames and hard frames; :meth:`add` returns a one-line warning the first time the
    hard share is clearly off the requested ``percent``.

    "Clearly": after at least ``min_frames`` frames, the share differs from ``percent`` by more
    than ``tolerance`` points and by more than three binomial standard errors (so a short or
    borderline run does not warn).
    """

    percent: float
    min_frames: int = 30
    tolerance: float = 15.0
    frames: int = 0
    hard: int = 0
    warned: bool = False

    def add(self, is_hard: bool) -> str | None:
        self.frames += 1
        self.hard += int(is_hard)
        if self.warned or self.frames < self.min_frames:
            return None
        share = 100.0 * self.hard / self.frames
        p = min(max(self.percent / 100.0, 0.01), 0.99)
        stderr = 100.0 * math.sqrt(p * (1 - p) / self.frames)
        if abs(share - self.percent) <= max(self.tolerance, 3 * stderr):
            return None
        self.warned = True
        return (f"p{self.percent:g} asked for {self.percent:g}% hard frames, but {share:.0f}% of the first "
                f"{self.frames} went hard: φ on these frames differs from the calibration images (e.g. video "
                "compression); recalibrate on frames like these (train_router.py --calibrate --data <their YAML>) "
                "or give a threshold number")
