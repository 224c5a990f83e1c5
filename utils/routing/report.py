"""What the router does on a dataset: φ histogram, easiest/hardest gallery (paper Fig. 8), stability."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from utils.data.images import read_image
from utils.routing.calibration import stability_report

STABILITY_PERCENTS = (10, 30, 50, 70, 90)


def plot_phi_gallery(phi: np.ndarray, paths: Sequence[str], path: Path, n: int = 8) -> Path:
    """The ``n`` lowest-φ images (top rows) and the ``n`` highest-φ images (bottom rows)."""
    from utils.evaluation.plots import plot_gallery
    order = np.argsort(phi, kind="stable")
    n = min(n, len(order) // 2) or len(order)
    picks = [("easy", i) for i in order[:n]] + [("hard", i) for i in order[::-1][:n]]
    images = [read_image(paths[i]) for _, i in picks]
    captions = [f"{tag} φ={phi[i]:.3f}" for tag, i in picks]
    return plot_gallery(images, captions, path, cols=min(n, 4), tile=224)


def plot_phi_histogram(phi: np.ndarray, path: Path, threshold: float | None = None) -> Path:
    from utils.evaluation.plots import plot_histogram
    lines = {"threshold": threshold} if threshold is not None and 0 < threshold < 1 else None
    return plot_histogram(phi, path, "difficulty φ", bins=30, vlines=lines,
                          title=f"router difficulty on {len(phi)} images")


def stability(calibration: Mapping | None, phi: np.ndarray,
              percents: Sequence[float] = STABILITY_PERCENTS) -> dict[float, float] | None:
    """{calibrated hard % k: achieved hard % on these images}, or None without a table."""
    table = (calibration or {}).get("table")
    if not table:
        return None
    return {float(k): 100 * f for k, f in stability_report(table, phi, percents).items()}


def format_stability(report: Mapping[float, float]) -> str:
    pairs = ", ".join(f"p{k:g} -> {v:.1f}%" for k, v in report.items())
    return f"Threshold stability (calibrated hard % -> hard % on these images): {pairs}"
