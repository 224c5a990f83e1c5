"""The routing policy: the one place where a dynamic model's routing threshold is chosen.

Every entry point (detect.py, test.py, export.py, train_router.py and the Python API) passes what
the user asked for (a threshold number, 'pK' = K% hard, a mean GFLOPs or a mean latency target)
to :func:`choose_threshold` and gets the threshold and one line saying how it was chosen; the
rule that applies it is :func:`models.route.route_mask`.

The costs behind a target: GFLOPs belong to the model (measured at the input size, or stored in
an export). Latency belongs to the machine and backend that run the model, not to the machine
that calibrated it, so a latency target uses route latencies measured here
(:func:`machine_latency`): with this backend, precision, thread count and input size, once, then
cached per user (``route_latency.json`` in :func:`utils.paths.user_cache_dir`), and measured again
on request (``remeasure``). The latencies a checkpoint stores (its calibrating machine's) are not
used for targets.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from utils.evaluation.evaluate import gflops_or_empty
from utils.io import atomic_write_text
from utils.paths import user_cache_dir
from utils.routing.calibration import resolve_threshold
from utils.routing.latency import inference_copy, route_latency

LOGGER = logging.getLogger("dydet.routing")
CACHE_FILE = "route_latency.json"


def choose_threshold(model: Any, info: Mapping, img_size: int, *, dy_thres: float | str | None = None,
                     target_latency: float | None = None, target_gflops: float | None = None,
                     gflops: Mapping[str, float] | None = None, default: float | None = None,
                     precision: str | None = None, remeasure: bool = False) -> tuple[float | None, str]:
    """(threshold, how it was chosen) for ``model`` at ``img_size``; (None, ...) for a plain model.

    At most one of ``dy_thres`` (a number or 'pK'), ``target_latency`` (ms per image) and
    ``target_gflops``. ``gflops``: the routes' GFLOPs if already known (else measured, or an
    export's stored ones). ``default``: the threshold when nothing is asked (the model's own).
    ``precision``: how the model runs when not in its weights' dtype (e.g. 'bf16' autocast).
    """
    if not model.is_dynamic:
        if any(v is not None for v in (dy_thres, target_latency, target_gflops)):
            LOGGER.warning("plain model: the routing request is ignored (a plain model has one route)")
        return None, "plain model (no routing)"
    latency = None
    if target_latency is not None:
        latency, source = machine_latency(model, info, img_size, precision=precision, remeasure=remeasure)
        LOGGER.info("route latencies: %s", source)
    if target_gflops is not None and gflops is None:
        gflops = route_gflops_of(model, img_size)
    default = model.threshold if default is None else default
    return resolve_threshold(dy_thres, info.get("thresholds"), target_latency=target_latency,
                             target_gflops=target_gflops, latencies=latency, gflops=gflops or None, default=default)


def route_gflops_of(model: Any, img_size: int) -> dict[str, float] | None:
    """Per-route GFLOPs at ``img_size`` (PyTorch), an export's stored ones, or None."""
    return gflops_or_empty(model, img_size) or None


# ---- latency on this machine ----------------------------------------------------------------------
def latency_key(model: Any, info: Mapping, img_size: int, precision: str | None = None) -> str:
    """What a route latency depends on: the machine (CPU or GPU, threads), the backend and its
    precision, the input size and the model file (its path, size and modification time)."""
    from utils.cpu import cpu_info
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters())
        device = torch.cuda.get_device_name(p.device) if p.device.type == "cuda" else "cpu"
        backend, prec = "pytorch", precision or str(p.dtype).replace("torch.", "")
        threads = torch.get_num_threads()
    else:
        device, backend = "cpu", str(info.get("format") or type(model).__name__)
        prec = precision or str(model.precision) + ("+int8" if model.int8 else "")
        threads = model.threads or "default"
    path = Path(str(info.get("path") or ""))
    try:
        st = path.stat()
        file = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        file = str(path) or "in memory"
    return f"{cpu_info().name} | {device} | threads {threads} | {backend} {prec} | {img_size} px | {file}"


def machine_latency(model: Any, info: Mapping, img_size: int, *, precision: str | None = None,
                    remeasure: bool = False, cache_dir: str | Path | None = None) -> tuple[dict[str, float], str]:
    """({'easy': ms, 'hard': ms}, where they come from) for ``model`` on this machine.

    Measured once per :func:`latency_key` and cached; ``remeasure`` measures again.
    """
    path = Path(cache_dir or user_cache_dir()) / CACHE_FILE
    key = latency_key(model, info, img_size, precision)
    cache = _read_cache(path)
    entry = cache.get(key)
    if entry and not remeasure:
        return {"easy": entry["easy"], "hard": entry["hard"]}, \
            f"easy {entry['easy']:.1f} ms, hard {entry['hard']:.1f} ms, measured on this machine on {entry['when']} " \
            f"(cached in {path}; remeasure to refresh)"
    runnable = model if model.fused else inference_copy(model)
    ms = route_latency(runnable, img_size)
    cache[key] = {**ms, "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_cache(path, cache)
    return ms, f"easy {ms['easy']:.1f} ms, hard {ms['hard']:.1f} ms, measured now on this machine at {img_size} px"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: measure
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError as e:  # a read-only home: measure again next time
        LOGGER.warning("route latencies not cached (%s): %s", path, e)
