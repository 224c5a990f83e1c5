"""Benchmark section ``deploy``: every CPU runtime per route at batch 1 and a larger batch.

Backends (each where available): ``pt_fused`` (eager, fused), ``pt_fast`` (the fast path),
``pt_bf16`` (fast path under bf16 autocast), ``ort_fp32`` (ONNX Runtime), ``ort_int8`` (ONNX
Runtime QDQ of the static single-route exports: it cannot keep the ``If``), ``ov_fp32``,
``ov_bf16`` and ``ov_int8`` (OpenVINO IR, NNCF INT8 calibrated on random images through both
routes). All exports come from the benchmark's random-weight model through
:func:`utils.export.pipeline.export_model`, one dynamic-batch file with the routing kept inside
(threshold an input) and one static file per route.

For each backend and batch: the dynamic export per route (threshold 1 / 0), the static export
per route, and at the larger batch a *mixed* batch (half the images hard, by φ) against its
two halves run alone. A backend's functions are interleaved with each other in their own block
(runtime thread pools keep spinning after a call, so interleaving runtimes would charge one for
another's threads), with an idle ``SETTLE_S`` before each timed call, because the dynamic and the
static exports of one backend are separate sessions with pools of their own.
"""
from __future__ import annotations

import copy
import gc
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from utils.benchmark.batches import split_batch
from utils.benchmark.peak import fraction
from utils.benchmark.stats import gflops_per_s, median, paired_ratio, ratio, summarize
from utils.benchmark.timing import SETTLE_S, interleaved, prepare
from utils.cpu import cpu_info
from utils.export.pipeline import export_model
from utils.export.spec import ExportOptions

BACKENDS = ("pt_fused", "pt_fast", "pt_bf16", "ort_fp32", "ort_int8", "ov_fp32", "ov_bf16", "ov_int8")
DTYPE = {"pt_fused": "fp32", "pt_fast": "fp32", "pt_bf16": "bf16", "ort_fp32": "fp32", "ort_int8": "int8",
         "ov_fp32": "fp32", "ov_bf16": "bf16", "ov_int8": "int8"}
ROUTES = ("easy", "hard")
Runner = dict[str, Callable]  # 'dynamic' (x, threshold), 'easy' / 'hard' (x): static exports


def deploy_section(bench, batches: tuple[int, ...], peaks: dict | None = None, calib_images: int = 8) -> dict:
    """Latencies of every backend (see module doc) for ``bench``'s dynamic model.

    Backends are built, timed and released one at a time: a dozen runtimes with their memory
    arenas sized for a batch of 16 at 640 px do not fit in memory together.
    """
    logging.getLogger("nncf").setLevel(logging.WARNING)  # one line per operation otherwise
    model = copy.deepcopy(bench.model).cpu().float().eval()
    x16, threshold, hard = _mixed_inputs(model, max(batches), bench.img_size)
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="dydet-deploy-") as tmp:
        factories, status = backend_factories(model, bench.img_size, Path(tmp), bench.opt.threads or None,
                                              calib_images)
        for name, make in factories.items():
            try:
                runner = make()
            except Exception as e:  # report and go on with the other backends
                status[name] = f"error: {type(e).__name__}: {e}"
                continue
            times[name] = time_backend(runner, x16, threshold, hard, batches, bench.opt.reps, bench.opt.warmup)
            del runner
            gc.collect()
    lat = {b: {k: summarize(v) for k, v in t.items()} for b, t in times.items()}
    return {"status": status, "batches": list(batches), "n_hard": int(hard.sum()), "latency": lat,
            "metrics": deploy_metrics(lat, bench.record["gflops"], batches, peaks)}


def _mixed_inputs(model, batch: int, img_size: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    return split_batch(model, max(batch, 2), img_size, torch.device("cpu"))


# ---- backends -------------------------------------------------------------------------------------
def _export(model, img_size: int, route: str, out: Path, include: tuple[str, ...]) -> dict:
    spec = ExportOptions(img_size=(img_size, img_size), route=route, dynamic_batch=True,
                         threshold=float(model.threshold), thres_input=route == "both")
    spec.check(model)
    return export_model(copy.deepcopy(model).fuse(), {"names": list(model.names)}, spec, out, include=include)


def backend_factories(model, img_size: int, tmp: Path, threads: int | None, calib: int
                      ) -> tuple[dict[str, Callable[[], Runner]], dict[str, str]]:
    """A function building each available backend's runner, and a status line per backend."""
    bf16 = cpu_info().bf16
    status = {n: "ok" for n in BACKENDS}
    make: dict[str, Callable[[], Runner]] = {
        "pt_fused": lambda: _torch_runner(prepare(model, "fused")),
        "pt_fast": lambda: _torch_runner(prepare(model, "fast"))}
    if bf16:
        make["pt_bf16"] = lambda: _torch_runner(prepare(model, "fast"), bf16=True)
    try:
        files = {r: _export(model, img_size, r, tmp / r, ("onnx", "openvino")) for r in ("both", "easy", "hard")}
    except Exception as e:  # no exporter / runtime here, or a failed export: report, keep PyTorch's numbers
        for n in BACKENDS[3:]:
            status[n] = f"skipped: export failed: {type(e).__name__}: {e}"
        return make, status
    onnx = {r: f["onnx"] for r, f in files.items()}
    ov = {r: f["openvino"] for r, f in files.items()}
    make["ort_fp32"] = lambda: _ort_runner(onnx, threads)
    make["ort_int8"] = lambda: _ort_runner(_quantize_onnx(onnx, calib, img_size), threads)
    status["ort_int8"] = "ok (static single-route exports: ONNX Runtime's quantizer cannot keep the If)"
    make["ov_fp32"] = lambda: _ov_runner(ov, threads, "f32")
    if bf16:
        make["ov_bf16"] = lambda: _ov_runner(ov, threads, "bf16")
    make["ov_int8"] = lambda: _ov_runner(_quantize_openvino(ov, calib, img_size), threads, None)
    status["ov_int8"] = f"ok (NNCF, {calib} random calibration images through both routes)"
    if not bf16:
        status["pt_bf16"] = status["ov_bf16"] = "skipped: no native bf16 on this CPU"
    return make, status


def _torch_runner(m: torch.nn.Module, bf16: bool = False) -> Runner:
    def run(x, threshold):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return m(x, threshold=threshold)
    return {"dynamic": run}  # no static counterpart: the same module with the threshold 1 / 0


def _ort_runner(files: dict, threads) -> Runner:
    """ONNX Runtime sessions of the exports in ``files`` ('both' routed, 'easy' / 'hard' static)."""
    from utils.runtime.onnx_model import OnnxModel
    s = {r: OnnxModel(path, threads=threads) for r, path in files.items()}
    runner: Runner = {r: s[r] for r in ROUTES if r in s}
    if "both" in s:
        runner["dynamic"] = lambda x, t: s["both"](x, threshold=t)
    return runner


def _ov_runner(folders: dict, threads, precision: str | None) -> Runner:
    """OpenVINO compiled models of the IR ``folders`` ('both', 'easy', 'hard')."""
    from utils.runtime.openvino_model import OpenVinoModel
    m = {r: OpenVinoModel(path, threads=threads, precision=precision) for r, path in folders.items()}
    return {"dynamic": lambda x, t: m["both"](x, threshold=t), "easy": m["easy"], "hard": m["hard"]}


def _quantize_onnx(files: dict, calib: int, img_size: int) -> dict:
    from utils.export.quantize import quantize_onnx
    return {r: quantize_onnx(files[r], _calibration(calib, img_size), n=calib) for r in ROUTES}


def _quantize_openvino(folders: dict, calib: int, img_size: int) -> dict:
    from utils.export.quantize import quantize_openvino
    return {r: quantize_openvino(path, _calibration(calib, img_size), n=calib) for r, path in folders.items()}


def _calibration(n: int, img_size: int) -> torch.Tensor:
    """Random images in [0, 1] from dark to bright, so the sharpened router sends some each way."""
    g = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.2, 1.0, n).view(-1, 1, 1, 1)
    return torch.rand(n, 3, img_size, img_size, generator=g) * scale


# ---- timing -----------------------------------------------------------------------------------------
def time_backend(r: Runner, x: torch.Tensor, threshold: float, hard: torch.Tensor, batches: tuple[int, ...],
                 reps: int, warmup: int) -> dict[str, list[float]]:
    """ms per call: ``b{n}_{dynamic|static}_{route}`` and, at the largest batch, ``mixed`` parts."""
    fns: dict[str, Callable] = {}
    for b in batches:
        xb = x[:b]
        for route, t in zip(ROUTES, (1.0, 0.0)):
            if "dynamic" in r:
                fns[f"b{b}_dynamic_{route}"] = (lambda xb=xb, t=t: r["dynamic"](xb, t))
            if route in r:
                fns[f"b{b}_static_{route}"] = (lambda xb=xb, route=route: r[route](xb))
    if "dynamic" in r and len(x) >= 2:
        easy_x, hard_x = x[~hard], x[hard]
        fns["mixed"] = lambda: r["dynamic"](x, threshold)
        fns["mixed_easy_part"] = lambda: r["dynamic"](easy_x, 1.0)
        fns["mixed_hard_part"] = lambda: r["dynamic"](hard_x, 0.0)
    return interleaved(fns, reps, warmup, settle_s=SETTLE_S)  # the exports are separate sessions


# ---- metrics --------------------------------------------------------------------------------------------
def deploy_metrics(lat: dict, gflops: dict, batches, peaks: dict | None) -> dict:
    """Per backend: per-image ms, GFLOP/s and fractions of peak per route and batch, dynamic vs
    static, mixed-batch efficiency; and the ratios to the fp32 fast path the goals use."""
    out: dict = {}
    for name, t in lat.items():
        rec: dict = {}
        for b in batches:
            for route in ROUTES:
                key = f"b{b}_dynamic_{route}" if f"b{b}_dynamic_{route}" in t else f"b{b}_static_{route}"
                ms = median(t.get(key))
                per_image = ms / b if ms is not None else None
                rate = gflops_per_s(gflops.get(route), per_image)
                rec[f"b{b}_{route}"] = {
                    "ms_per_image": per_image, "gflops_per_s": rate,
                    "dynamic_vs_static": ratio(median(t.get(f"b{b}_dynamic_{route}")),
                                               median(t.get(f"b{b}_static_{route}"))),
                    "fraction_of_measured_peak": fraction(rate, _peak(peaks, DTYPE[name], "measured")),
                    "fraction_of_theoretical_peak": fraction(rate, _peak(peaks, DTYPE[name], "theoretical"))}
        if "mixed" in t:
            rec["mixed_efficiency"] = paired_ratio([t["mixed_easy_part"], t["mixed_hard_part"]], [t["mixed"]])
        out[name] = rec
    out["vs_fast"] = {n: {k: ratio(v["ms_per_image"], out["pt_fast"][k]["ms_per_image"])
                          for k, v in rec.items() if isinstance(v, dict)}
                      for n, rec in out.items() if n != "pt_fast" and "pt_fast" in out}
    return out


def _peak(peaks: dict | None, dtype: str, which: str) -> float | None:
    p = (peaks or {}).get(dtype) or {}
    return p.get("measured") if which == "measured" else (p.get("theoretical") or {}).get("gflops")


# ---- goals: INT8 and bf16 against the fast path, dynamic against static exports ------------------------------------------------------------------------------
def deploy_goals(rec: dict, flags: frozenset[str]) -> list[tuple[str, str, str, float, float | None]]:
    """(key, description, op, target, value) for one config's deploy section: ratios in one run."""
    m = (rec.get("deploy") or {}).get("metrics") or {}
    fast = m.get("pt_fast")
    if not fast:
        return []
    vs = m.get("vs_fast", {})
    b1 = [f"b1_{r}" for r in ROUTES]
    worst = lambda name: _worst(vs.get(name, {}).get(k) for k in b1)  # noqa: E731
    int8_target = 0.3 if "avx512f" in flags else 0.6
    bf16 = [v for v in (worst("pt_bf16"), worst("ov_bf16")) if v is not None]
    fp32 = [m[n][k]["ms_per_image"] for n in ("pt_fused", "pt_fast", "ort_fp32", "ov_fp32") if n in m for k in b1]
    best_fp32 = {k: min(m[n][k]["ms_per_image"] for n in ("pt_fused", "pt_fast", "ort_fp32", "ov_fp32") if n in m)
                 for k in b1} if fp32 else {}
    rows = [("ov_int8_vs_fast", "OpenVINO INT8 / fp32 fast path, worst route, batch 1", "<=", int8_target,
             worst("ov_int8")),
            ("bf16_vs_fast", "best bf16 (PyTorch autocast or OpenVINO) / fp32 fast path, worst route, batch 1",
             "<=", 0.55, min(bf16) if bf16 else None),
            ("fast_vs_best_fp32", "fp32 fast path / fastest fp32 runtime, worst route, batch 1", "<=", 1.10,
             _worst(ratio(fast[k]["ms_per_image"], best_fp32.get(k)) for k in b1))]
    for name, r in m.items():
        if name == "vs_fast":
            continue
        dyn = [v["dynamic_vs_static"] for v in r.values() if isinstance(v, dict)]
        if not any(v is not None for v in dyn) and r.get("mixed_efficiency") is None:
            continue
        rows.append((f"{name}_routing_overhead", f"{name}: dynamic export easy / static easy export, batch 1",
                     "<=", 1.02, r.get("b1_easy", {}).get("dynamic_vs_static")))
        rows.append((f"{name}_dynamic_vs_static", f"{name}: dynamic / static export, worst route and batch",
                     "<=", 1.03, _worst(dyn)))
        rows.append((f"{name}_mixed", f"{name}: mixed batch throughput / ideal", ">=", 0.95,
                     r.get("mixed_efficiency")))
    return rows


def _worst(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None
