"""Writing an export and checking it: ONNX, TorchScript and OpenVINO files (and their INT8 copies)
compared with the PyTorch model.

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
from utils.export.exporters import onnx_graph, onnx_metadata, save_onnx, simplify, torchscript_module
from utils.runtime.onnx_model import OnnxModel
from utils.export.parity import ScriptBackend, parity
from utils.export.spec import ExportOptions
from utils.io import atomic_write

LOGGER = logging.getLogger("dydet.export")
FORMATS = ("onnx", "torchscript", "openvino")


def export_model(model: torch.nn.Module, info: dict, opt: ExportOptions, base: Path, *,
                 include: tuple[str, ...] = ("onnx",), simplify_graph: bool = False, atol: float = 1e-3,
                 int8_calibration=None, int8_images: int = 300, int8_saturation_safe: bool = True) -> dict:
    """Write ``base`` + ``.onnx`` / ``.torchscript`` / ``_openvino/`` for each format in ``include``
    and check parity; with ``int8_calibration`` (images, a folder or a data YAML) also the INT8
    versions (``_int8_openvino/``, ``-int8.onnx``) of the ONNX and OpenVINO exports, with 7-bit
    weights unless ``int8_saturation_safe`` is False (see :mod:`utils.export.quantize`).

    Returns ``{format: path, 'diff': {format: {route: max abs diff}}}``; an fp32 difference
    above ``atol`` raises RuntimeError (the file stays, for inspection). INT8 files are compared
    with PyTorch too and their differences reported, not checked: INT8 is judged by accuracy.
    """
    out: dict = {"diff": {}}
    onnx_path = base.with_suffix(".onnx")
    if "onnx" in include or "openvino" in include:  # OpenVINO converts the ONNX file
        out["onnx"], out["diff"]["onnx"] = export_onnx(model, info, opt, onnx_path, simplify_graph)
    if "torchscript" in include:
        out["torchscript"], out["diff"]["torchscript"] = export_torchscript(model, info, opt,
                                                                            base.with_suffix(".torchscript"))
    if "openvino" in include:
        out["openvino"], out["diff"]["openvino"] = export_openvino_ir(model, opt, onnx_path)
    _check_parity(out["diff"], atol)
    if int8_calibration is not None:
        out.update(export_int8(model, opt, out, int8_calibration, int8_images, int8_saturation_safe))
    return out


def export_openvino_ir(model: torch.nn.Module, opt: ExportOptions, onnx_path: Path) -> tuple[Path, dict]:
    """``<name>_openvino/`` from the ONNX file (route kept as one If), compared with PyTorch."""
    from utils.export.openvino import OpenVinoModel, export_openvino
    t0 = time.perf_counter()
    folder = export_openvino(onnx_path)
    print(f"OpenVINO: {folder} ({time.perf_counter() - t0:.1f} s)")
    diffs = parity(OpenVinoModel(folder), model, opt, threshold_free=opt.thres_input, end2end=opt.end2end)
    _report("max |OpenVINO - PyTorch|", diffs)
    return folder, diffs


def export_int8(model: torch.nn.Module, opt: ExportOptions, written: dict, calibration, n: int,
                saturation_safe: bool = True) -> dict:
    """INT8 copies of the written ONNX / OpenVINO exports, calibrated on ``calibration`` images."""
    from utils.export.quantize import quantize_onnx, quantize_openvino
    logging.getLogger("nncf").setLevel(logging.WARNING)  # one line per operation otherwise
    out: dict = {}
    if "openvino" in written:
        from utils.export.openvino import OpenVinoModel
        out["openvino_int8"] = quantize_openvino(written["openvino"], calibration, n=n,
                                                saturation_safe=saturation_safe)
        backend = OpenVinoModel(out["openvino_int8"])
    elif "onnx" in written:
        out["onnx_int8"] = quantize_onnx(written["onnx"], calibration, n=n, saturation_safe=saturation_safe)
        backend = OnnxModel(out["onnx_int8"])
    else:
        raise ValueError("--int8 quantizes an ONNX or OpenVINO export; add --include onnx or openvino")
    key = next(iter(out))
    print(f"INT8: {out[key]}")
    diffs = parity(backend, model, opt, threshold_free=opt.thres_input, end2end=opt.end2end)
    _report("max |INT8 - PyTorch fp32| (not checked: INT8 is judged by its accuracy)", diffs)
    written["diff"][key] = diffs
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


