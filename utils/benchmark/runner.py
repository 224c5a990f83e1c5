"""Benchmark suite: GEMM peaks, route latencies, routing overhead, mixed batches, ONNX Runtime,
deployment backends, router training.

Timings are wall-clock, device-synchronised and *interleaved*: each repetition calls every
measured function once in turn, so a change of machine load hits all of them alike and the
ratios between them stay meaningful. Two inference modes are compared at batch 1:

* ``fused``: ``model.fuse()``, plain eager PyTorch (NCHW, default allocator);
* ``fast``: ``model.optimize_for_inference()``, the default inference path (pre-packed oneDNN
  convolutions with folded activations, channels-last, freed memory kept by glibc).

All ``fused`` measurements run before anything switches the allocator (see
:func:`models.fastpath.keep_freed_memory`), which is restored at the end.
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from models import fastpath
from models.flops import route_gflops
from models.parse import find_cfg
from models.yolo import build_model
from utils.benchmark.batches import split_batch
from utils.benchmark.deploy import deploy_goals
from utils.benchmark.options import SECTIONS, BenchmarkOptions
from utils.benchmark.peak import measured_peaks
from utils.benchmark.plot import latency_plot
from utils.benchmark.report import markdown
from utils.benchmark.runtimes import onnx_section
from utils.benchmark.stats import check_goals, latency_metrics, mixed_metrics, summarize
from utils.benchmark.timing import interleaved, prepare
from utils.cpu import cpu_flags
from utils.options import options_dict
from utils.torch_utils import select_device
from utils.weights.checkpoints import git_hash


def plain_counterpart(cfg: str) -> str | None:
    """The plain config a dynamic config is built on (a Dy config's ``base:``, a DualRes config's
    ``detector:``), as a path or config name."""
    path = find_cfg(cfg)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if "dualres" in raw and isinstance(raw.get("detector"), str):
        inner = raw["detector"]
        return plain_counterpart(inner) or str(find_cfg(inner))
    return str(path.parent / raw["base"]) if "dynamic" in raw and raw.get("base") else None


class ConfigBench:
    """The models and input of one (config, image size) pair, and the sections measured on them."""

    def __init__(self, cfg: str, img_size: int, device: torch.device, opt: BenchmarkOptions) -> None:
        self.cfg, self.img_size, self.device, self.opt = cfg, int(img_size), device, opt
        torch.manual_seed(0)
        self.model = build_model(cfg).to(device).eval()
        base = plain_counterpart(cfg) if self.model.is_dynamic else None
        self.plain = build_model(base).to(device).eval() if base else None
        self.x = torch.rand(1, 3, self.img_size, self.img_size, device=device)
        self.record: dict = {"cfg": cfg, "img_size": self.img_size, "dynamic": self.model.is_dynamic,
                             "plain_cfg": Path(base).stem if base else None, "gflops": self._gflops(), "modes": {}}

    def _gflops(self) -> dict[str, float]:
        g = route_gflops(self.model, self.img_size)
        if not self.model.is_dynamic:
            return {"plain": g["all"]}
        if self.plain is not None:
            g["plain"] = route_gflops(self.plain, self.img_size)["all"]
        return g

    def route_fns(self, model: torch.nn.Module, plain: torch.nn.Module | None, x: torch.Tensor) -> dict:
        """Callables running each route of ``model`` (and the plain model) on ``x``."""
        if not model.is_dynamic:
            return {"plain": lambda: model(x)}
        fns = {"easy": lambda: model(x, threshold=1.0), "hard": lambda: model(x, threshold=0.0)}
        if plain is not None:
            fns["plain"] = lambda: plain(x)
        return fns

    @torch.inference_mode()
    def latency(self, mode: str) -> dict:
        """Batch-1 latency of every route (and the plain model) in ``mode``, interleaved."""
        model = prepare(self.model, mode)
        plain = prepare(self.plain, mode) if self.plain is not None else None
        times = interleaved(self.route_fns(model, plain, self.x), self.opt.reps, self.opt.warmup)
        lat = {k: summarize(v) for k, v in times.items()}
        rec = {"latency": lat, "metrics": latency_metrics(lat, self.record["gflops"])}
        self.record["modes"][mode] = rec
        return rec

    @torch.inference_mode()
    def mixed_batch(self, mode: str) -> dict:
        """Batch ``opt.batch`` with half the images hard, against its easy and hard halves run alone."""
        model = prepare(self.model, mode)
        x, threshold, hard = split_batch(model, self.opt.batch, self.img_size, self.device)
        easy_x, hard_x = x[~hard], x[hard]
        times = interleaved({"mixed": lambda: model(x, threshold=threshold),
                             "easy_part": lambda: model(easy_x, threshold=1.0),
                             "hard_part": lambda: model(hard_x, threshold=0.0)}, self.opt.reps, self.opt.warmup)
        s = {k: summarize(v) for k, v in times.items()}
        rec = {"mode": mode, "batch": self.opt.batch, "n_hard": int(hard.sum()), **s,
               "metrics": mixed_metrics(s["mixed"], s["easy_part"], s["hard_part"], self.opt.batch)}
        self.record["mixed_batch"] = rec
        return rec


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on, including the load (so a busy machine is visible)."""
    info = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_hash(),
            "python": platform.python_version(), "torch": torch.__version__, "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "onednn_fastpath": fastpath.available()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_benchmark(opt: BenchmarkOptions) -> dict:
    """Measure every requested (config, image size), write JSON and markdown, return the result."""
    skip = parse_skip(opt.skip)
    device = select_device(opt.device)
    threads = torch.get_num_threads()
    if opt.threads:
        torch.set_num_threads(int(opt.threads))
    fastpath.keep_freed_memory(False)
    t0 = time.perf_counter()
    result = {"meta": {**machine_info(device), "load_before": _load(), "options": _options(opt)}}
    try:
        if "peak" not in skip:
            _log("measured GEMM peaks (fp32, bf16, int8)", t0)
            result["peaks"] = measured_peaks(opt.threads or None, n=opt.peak_n, reps=opt.reps, warmup=opt.warmup)
        benches = [ConfigBench(c, s, device, opt) for c in opt.cfg for s in opt.img_size]
        _run_sections(benches, opt, skip, t0, result.get("peaks"))
    finally:
        fastpath.keep_freed_memory(False)
        torch.set_num_threads(threads)
    records = [b.record for b in benches]
    result["meta"].update(load_after=_load(), seconds=round(time.perf_counter() - t0, 1))
    result["configs"] = records
    flags = cpu_flags()
    result["goals"] = check_goals(records, "fast" if "fast" not in skip else "fused",
                                  extra=lambda rec: deploy_goals(rec, flags))
    result["meta"]["cpu_flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "vnni")))
    result["files"] = write_outputs(result, Path(opt.out))
    return result


def _run_sections(benches: list[ConfigBench], opt: BenchmarkOptions, skip: set[str], t0: float,
                  peaks: dict | None = None) -> None:
    """The plain-eager mode first (default allocator), then everything on the fast path."""
    if "fused" not in skip:
        for b in benches:
            _log(f"{b.cfg} @ {b.img_size}: latency, fused eager", t0)
            b.latency("fused")
    mode = "fast" if "fast" not in skip else "fused"
    if mode == "fast":
        fastpath.keep_freed_memory(True)
    for b in benches:
        if "fast" not in skip:
            _log(f"{b.cfg} @ {b.img_size}: latency, fast path", t0)
            b.latency("fast")
        if "mixed" not in skip and b.model.is_dynamic:
            _log(f"{b.cfg} @ {b.img_size}: mixed batch of {opt.batch}", t0)
            b.mixed_batch(mode)
        if "onnx" not in skip and b.model.is_dynamic:
            _log(f"{b.cfg} @ {b.img_size}: ONNX Runtime", t0)
            b.record["onnx"] = onnx_section(b, mode)
        if "deploy" not in skip and b.model.route_names == ("easy", "hard"):
            from utils.benchmark.deploy import (
                deploy_section,  # exports and quantizes (slow imports)
            )
            _log(f"{b.cfg} @ {b.img_size}: deploy (PyTorch, ONNX Runtime, OpenVINO; fp32, bf16, INT8)", t0)
            b.record["deploy"] = deploy_section(b, tuple(opt.deploy_batch), peaks, opt.calib_images)
        if "router" not in skip and b.model.is_dynamic:
            from utils.benchmark.router_training import (
                router_section,  # imports the data pipeline (slow)
            )
            _log(f"{b.cfg} @ {b.img_size}: router training", t0)
            b.record["router_training"] = router_section(b)


def parse_skip(skip: str | list | tuple | None) -> set[str]:
    """``'onnx,router'`` (or a list) -> a checked set of section names."""
    items = skip.split(",") if isinstance(skip, str) else list(skip or [])
    names = {s.strip().lower() for s in items if s and s.strip()}
    unknown = names - set(SECTIONS)
    if unknown:
        raise ValueError(f"--skip: unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return names


def _options(opt: BenchmarkOptions) -> dict:
    return options_dict(opt)


def _log(msg: str, t0: float) -> None:
    print(f"benchmark [{time.perf_counter() - t0:6.1f} s]: {msg}", flush=True)


def write_outputs(result: dict, out: Path) -> dict[str, str]:
    """``benchmark.json`` and ``benchmark.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "benchmark.json", "markdown": out / "benchmark.md"}
    files["json"].write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    files["markdown"].write_text(markdown(result), encoding="utf-8")
    plot = latency_plot(result.get("configs", []), out / "benchmark_latency.png")
    if plot is not None:
        files["plot"] = plot
    return {k: str(v) for k, v in files.items()}
