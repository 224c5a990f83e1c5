"""Writing an export and checking it: ONNX or TorchScript files compared with the PyTorch model.

export.py and the benchmark call :func:`export_model` on a loaded, fused model; every file is
written atomically and then run against PyTorch on inputs that take each route.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch

from models.flops import route_gflops
from utils.export.exporters import ExportOptions, onnx_graph, onnx_metadata, save_onnx, simplify, torchscript_module
from utils.export.onnx_model import OnnxModel
from utils.export.parity import ScriptBackend, parity
from utils.io import atomic_write

LOGGER = logging.getLogger("dydet.export")
FORMATS = ("onnx", "torchscript")


def export_model(model: torch.nn.Module, info: dict, opt: ExportOptions, base: Path, *,
                 include: tuple[str, ...] = ("onnx",), simplify_graph: bool = False, atol: float = 1e-3) -> dict:
    """Write ``base`` + ``.onnx`` / ``.torchscript`` for each format in ``include`` and check parity.

    Returns ``{format: path, 'diff': {format: {route: max abs diff}}}``; a difference above
    ``atol`` raises RuntimeError (the file stays, for inspection).
    """
    out: dict = {"diff": {}}
    if "onnx" in include:
        out["onnx"], out["diff"]["onnx"] = export_onnx(model, info, opt, base.with_suffix(".onnx"), simplify_graph)
    if "torchscript" in include:
        out["torchscript"], out["diff"]["torchscript"] = export_torchscript(model, info, opt,
                                                                            base.with_suffix(".torchscript"))
    _check_parity(out["diff"], atol)
    return out


def export_onnx(model: torch.nn.Module, info: dict, opt: ExportOptions, path: Path,
                simplify_graph: bool = False) -> tuple[Path, dict[str, float | None]]:
    """Write the ONNX file (checked by onnx.checker) and compare ONNX Runtime with PyTorch."""
    t0 = time.perf_counter()
    proto = onnx_graph(model, opt, onnx_metadata(model, opt, info, _gflops(model, opt)))
    if simplify_graph:
        proto = simplify(proto)
    save_onnx(proto, path)
    print(f"ONNX: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s), onnx.checker passed")
    diffs = parity(OnnxModel(path), model, opt, threshold_free=opt.thres_input, end2end=opt.end2end)
    _report("max |ONNX Runtime - PyTorch|", diffs)
    return path, diffs


def export_torchscript(model: torch.nn.Module, info: dict, opt: ExportOptions,
                       path: Path) -> tuple[Path, dict[str, float | None]]:
    """Write the TorchScript file (metadata in the ``dydet.json`` extra file), reload it, compare."""
    t0 = time.perf_counter()
    module = torchscript_module(model, opt)
    extra = {"dydet.json": _script_metadata(model, opt, info)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        atomic_write(path, lambda p: torch.jit.save(module, str(p), _extra_files=extra))
        loaded = torch.jit.load(str(path), map_location="cpu")
    print(f"TorchScript: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    routed = model.is_dynamic and opt.route == "both"
    backend = ScriptBackend(loaded, routed, model.is_dynamic and not routed)
    diffs = parity(backend, model.cpu(), opt, threshold_free=True)
    _report("max |TorchScript - PyTorch|", diffs)
    return path, diffs


def _script_metadata(model: torch.nn.Module, opt: ExportOptions, info: dict) -> str:
    """The ONNX metadata, adjusted: a routed TorchScript module always takes the threshold."""
    meta = onnx_metadata(model, opt, info)
    meta.update(format="dydet-torchscript-v1", threshold_input=meta["dynamic"], end2end=None)
    return json.dumps(meta)


def _gflops(model, opt: ExportOptions) -> dict[str, float]:
    h, w = opt.img_size
    try:
        return route_gflops(model, h) if h == w else {}
    except (RuntimeError, ValueError, TypeError, ImportError) as e:  # informative only
        LOGGER.warning("GFLOPs not stored: %s", e)
        return {}


def _report(title: str, diffs: dict[str, float | None]) -> None:
    parts = [f"{k} {'not reached by the probe images' if v is None else f'{v:.2e}'}" for k, v in diffs.items()]
    print(f"  {title}: {', '.join(parts)}")


def _check_parity(diffs: dict[str, dict], atol: float) -> None:
    for fmt, per_route in diffs.items():
        for route, d in per_route.items():
            if d is not None and not d <= atol:
                raise RuntimeError(f"{fmt} export differs from PyTorch by {d:.3g} > {atol:g} on the {route} route")


