"""Whether mixing the two routes hurts: their confidence scores on different scales.

COCO mAP ranks every detection of a data set by its score. When the two routes' detectors score
on different scales (one's 0.03 means what the other's 0.8 means), the images one route handles
flood the ranking with confident false positives, and a routed mix scores *below both* routes
run alone, where it should lie between them. Jointly trained detectors usually agree; a
fine-tuned or frozen pair, or one detector at two resolutions, need not. The repair is a score
map per route (:mod:`utils.inference.score_calibration`), which ``train_router.py --calibrate`` fits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence


def below_both(mixed: float, route_maps: Sequence[float]) -> bool:
    """Whether a routed mAP is clearly below both routes' own: by more than 0.01 and 20% of the lower."""
    low = min(route_maps)
    return mixed < low - max(0.01, 0.2 * low)


def mixing_warning(mixed: float, route_maps: Mapping[str, float], where: str) -> str | None:
    """One line when ``mixed`` (the routed mAP@.5:.95 at ``where``) is clearly below both routes'."""
    if not below_both(mixed, list(route_maps.values())):
        return None
    routes = " and ".join(f"{k} {v:.3f}" for k, v in route_maps.items())
    return (f"routed mAP@.5:.95 {mixed:.3f} ({where}) is below both routes alone ({routes}): their confidence "
            "scores are on different scales, so mixing them in one ranking adds confident false positives; fit a "
            "score map per route on validation images: python train_router.py --calibrate --weights W --data D")


def sweep_warning(points: Sequence[Mapping]) -> str | None:
    """:func:`mixing_warning` for the worst interior point of a sweep (0% and 100% hard are the routes)."""
    if len(points) < 3:
        return None
    ends = {"all easy": points[0]["map"], "all hard": points[-1]["map"]}
    worst = min(points[1:-1], key=lambda p: p["map"])
    return mixing_warning(worst["map"], ends, f"{100 * worst['hard_fraction']:.0f}% hard")
