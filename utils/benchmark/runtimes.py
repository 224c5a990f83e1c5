"""Benchmark section: ONNX Runtime per route, one-file dynamic export vs static single-route exports.

The exports are written by :func:`utils.export.pipeline.export_model` (what export.py runs) from
the benchmark's own (random-weight) model. Each runner (three ONNX Runtime sessions, the eager model) is timed in
its own block of warm-up and repetitions: their thread pools keep spinning for a while after a
call, so interleaving them would charge one runner for another's idle threads.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from utils.benchmark.stats import onnx_metrics, summarize
from utils.benchmark.timing import interleaved, prepare
from utils.export.pipeline import export_model
from utils.export.spec import ExportOptions

EXPORTS = {"dynamic": "both", "static_easy": "easy", "static_hard": "hard"}


def export_onnx(model: torch.nn.Module, img_size: int, route: str, out: Path) -> Path:
    """One ONNX file of ``model`` for ``route`` ('both' keeps the routing in the graph, threshold an input)."""
    fused = copy.deepcopy(model).cpu().float().fuse().eval()
    spec = ExportOptions(img_size=(img_size, img_size), route=route, threshold=float(model.threshold))
    spec.check(fused)
    return Path(export_model(fused, {"names": list(model.names)}, spec, out.with_suffix(""), include=("onnx",))["onnx"])


def onnx_section(bench, mode: str) -> dict:
    """Latency of ONNX Runtime per route for each export, with the eager model in the same rounds."""
    try:
        import onnx  # noqa: F401  (the exporter)
        import onnxruntime  # noqa: F401  (the runtime)

        from utils.runtime.onnx_model import OnnxModel
    except ImportError as e:
        return {"status": f"skipped: ONNX export not available ({e})"}
    with tempfile.TemporaryDirectory(prefix="dydet-bench-") as tmp:
        try:
            sessions = _sessions(bench, Path(tmp), OnnxModel)
        except Exception as e:  # report and go on with the other sections
            return {"status": f"error: export failed: {type(e).__name__}: {e}"}
        eager = prepare(bench.model, mode)
        times = _timed(bench, sessions, eager)
    ort = {k: summarize(v) for k, v in times.items() if not k.startswith("eager_")}
    eager_lat = {k[len("eager_"):]: summarize(v) for k, v in times.items() if k.startswith("eager_")}
    fused = bench.record["modes"].get("fused", {}).get("latency")
    return {"status": "ok", "eager_mode": mode, "threads": bench.opt.threads or torch.get_num_threads(),
            "ort": ort, "eager": eager_lat, "metrics": onnx_metrics(ort, eager_lat, fused)}


def _sessions(bench, tmp: Path, onnx_model_cls) -> dict:
    sessions = {}
    for name, route in EXPORTS.items():
        path = export_onnx(bench.model, bench.img_size, route, tmp / f"{name}.onnx")
        sessions[name] = onnx_model_cls(path, device=bench.device, threads=bench.opt.threads or None)
    return sessions


@torch.inference_mode()
def _timed(bench, sessions: dict, eager: torch.nn.Module) -> dict[str, list[float]]:
    x = bench.x
    fns = {"dynamic_easy": lambda: sessions["dynamic"](x, threshold=1.0),
           "dynamic_hard": lambda: sessions["dynamic"](x, threshold=0.0),
           "static_easy": lambda: sessions["static_easy"](x),
           "static_hard": lambda: sessions["static_hard"](x),
           "eager_easy": lambda: eager(x, threshold=1.0),
           "eager_hard": lambda: eager(x, threshold=0.0)}
    times: dict[str, list[float]] = {}
    for name, fn in fns.items():
        times.update(interleaved({name: fn}, bench.opt.reps, bench.opt.warmup))
    return times
