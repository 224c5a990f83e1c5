"""``benchmark_latency.png``: latency per route per backend (the deploy section), one panel per config."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROUTES = ("easy", "hard")


def latency_plot(configs: Sequence[Mapping], path: Path) -> Path | None:
    """Grouped bars of batch-1 and largest-batch ms per image, per backend and route; None if no deploy data."""
    panels = [c for c in configs if (c.get("deploy") or {}).get("metrics")]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for ax, c in zip(axes[:, 0], panels):
        _panel(ax, c)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(ax, c: Mapping) -> None:
    d = c["deploy"]
    m = {k: v for k, v in d["metrics"].items() if k != "vs_fast"}
    batches = sorted({1, max(d["batches"])})
    series = [(b, r) for b in batches for r in ROUTES]
    x = np.arange(len(m))
    width = 0.8 / len(series)
    for i, (b, r) in enumerate(series):
        vals = [(rec.get(f"b{b}_{r}") or {}).get("ms_per_image") or 0.0 for rec in m.values()]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=f"{r}, batch {b}")
    ax.set_xticks(x, list(m), rotation=20)
    ax.set_ylabel("ms per image")
    ax.set_title(f"{c['cfg']} @ {c['img_size']} px")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
