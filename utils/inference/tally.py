"""Counting a detect run: images and frames, routes and their time, and the printed summary."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from utils.inference.results import Result
from utils.inference.writer import ResultWriter


@dataclass
class Tally:
    """Counts and per-route time over a run (each image's share of its batch's time)."""

    threshold: float | None = None
    img_size: int | None = None
    route_names: tuple[str, str] = ("easy", "hard")
    images: int = 0
    frames: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    route_ms: dict[str, float] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def add(self, r: Result) -> None:
        if r.frame is None:
            self.images += 1
        else:
            self.frames += 1
        route = r.route or "all"
        self.routes[route] = self.routes.get(route, 0) + 1
        self.route_ms[route] = self.route_ms.get(route, 0.0) + sum(r.speed.values())
        for k, v in r.speed.items():
            self.stage_ms[k] = self.stage_ms.get(k, 0.0) + v

    def summary(self, save_dir: Path, outputs: ResultWriter) -> dict:
        n = max(self.images + self.frames, 1)
        return {
            "images": self.images, "frames": self.frames,
            **{k: self.routes.get(k, 0) for k in self.route_names}, "route_names": list(self.route_names),
            "threshold": self.threshold, "img_size": self.img_size,
            "ms_per_route": {k: self.route_ms[k] / c for k, c in self.routes.items()},
            "ms_per_stage": {k: v / n for k, v in self.stage_ms.items()},
            "seconds": time.perf_counter() - self.start,
            "save_dir": str(save_dir), "saved": [str(p) for p in outputs.saved], "labels": outputs.n_labels,
        }


def print_summary(s: dict) -> None:
    print(f"Done: {s['images']} images and {s['frames']} video frames in {s['seconds']:.1f} s")
    per = s["ms_per_route"]
    if s["threshold"] is not None:
        routes = ", ".join(f"{s[k]} {k}" + (f" ({per[k]:.1f} ms each)" if k in per else "")
                           for k in s["route_names"])
        print(f"Routing (threshold {s['threshold']:.4g}): {routes}")
    stages = s["ms_per_stage"]
    if stages:
        print(f"Speed: {stages.get('pre', 0):.1f} ms pre-process, {stages.get('infer', 0):.1f} ms inference, "
              f"{stages.get('nms', 0):.1f} ms NMS per image")
    saved = [f"{len(s['saved'])} images/videos"] + ([f"{s['labels']} label files in labels/"] if s["labels"] else [])
    print(f"Results saved to {s['save_dir']} ({', '.join(saved)})")
