"""The OpenVINO backend: an IR folder of an export, called like the PyTorch model.

:class:`OpenVinoModel` mirrors :class:`utils.runtime.onnx_model.OnnxModel`: ``model(x,
threshold=None)`` returns a :class:`models.dynamic.DyOutput` for a routed graph, the prediction
otherwise; ``names``, ``stride``, ``img_size``, ``is_dynamic``, ``kind``, ``route_names``,
``end2end``, ``info``, ``eval()``. It compiles for the CPU in fp32 unless told otherwise:
OpenVINO's own default on a CPU with AVX512_BF16 or AMX is bf16, which would silently change the
numbers. ``precision='bf16'`` asks for bf16 explicitly and is refused with a ValueError on a CPU
without native bf16 (:func:`utils.cpu.require_bf16`). An INT8 IR (NNCF) runs its quantized
convolutions in INT8 and the rest in the precision asked for.

The IR folder ``<name>_openvino/`` (written by :mod:`utils.export.openvino`) holds
``<name>.xml`` / ``<name>.bin`` and ``metadata.json``; the same JSON sits in the IR's
``rt_info`` (``dydet/metadata``), so the ``.xml`` alone is enough.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from utils.cpu import require_bf16
from utils.runtime.backend import ExportBackend
from utils.runtime.saturation import warn_if_unsafe
from utils.sigaltstack import kept_sigaltstack
from utils.validate import describe_file

LOGGER = logging.getLogger(__name__)
FORMAT = "dydet-openvino-v1"
METADATA_FILE = "metadata.json"
RT_INFO_PATH = ["dydet", "metadata"]
SUFFIX = "_openvino"
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}


def openvino_module():
    """The ``openvino`` package, or an ImportError saying how to install it."""
    try:
        import openvino as ov
    except ImportError as e:  # optional dependency
        raise ImportError("OpenVINO is not installed: pip install openvino") from e
    return ov


def compile_cpu(model, config: dict, core=None):
    """``core.compile_model(model, "CPU", config)`` keeping the thread's signal stack (see utils.sigaltstack)."""
    core = core if core is not None else openvino_module().Core()
    with kept_sigaltstack():
        return core.compile_model(model, "CPU", config)


def ov_version() -> str:
    return openvino_module().get_version()


# ---- paths --------------------------------------------------------------------------------------
def is_openvino(weights: str | Path) -> bool:
    """An ``.xml`` IR or a folder holding one (``*_openvino/``)."""
    p = Path(weights)
    if p.suffix.lower() == ".xml":
        return True
    return p.name.endswith(SUFFIX) or (p.is_dir() and any(p.glob("*.xml")))


def find_xml(path: str | Path) -> Path:
    """The IR ``.xml`` of ``path`` (the file itself, or the one ``.xml`` in a folder)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".xml":
        return p
    if p.is_dir():
        xmls = sorted(p.glob("*.xml"))
        if len(xmls) == 1:
            return xmls[0]
        if xmls:
            named = p / (p.name[: -len(SUFFIX)] + ".xml") if p.name.endswith(SUFFIX) else None
            if named is not None and named.is_file():
                return named
            raise ValueError(f"{p} holds several .xml files ({', '.join(x.name for x in xmls)}); pass one of them")
    raise FileNotFoundError(f"OpenVINO IR {str(p)!r} not found (an .xml file or a folder holding one)")



# ---- graph inspection ---------------------------------------------------------------------------
def count_ops(model, op_type: str) -> int:
    """How many ``op_type`` ops an OpenVINO model holds, its ``If`` / loop bodies included."""
    n = 0
    for op in model.get_ordered_ops():
        n += op.get_type_name() == op_type
        if hasattr(op, "get_function"):
            for i in range(_n_bodies(op)):
                n += count_ops(op.get_function(i), op_type)
    return n


def _n_bodies(op) -> int:
    return 2 if op.get_type_name() == "If" else (1 if op.get_type_name() in ("Loop", "TensorIterator") else 0)


def if_bodies(model) -> list[tuple[str, object]]:
    """(name, body model) of every ``If`` body, outermost first: ``If_24/then``, ``If_24/else``."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "If":
            for i, branch in enumerate(("then", "else")):
                body = op.get_function(i)
                out.append((f"{op.get_friendly_name()}/{branch}", body))
                out.extend((f"{op.get_friendly_name()}/{branch}/{k}", b) for k, b in if_bodies(body))
    return out


# ---- backend --------------------------------------------------------------------------------------
def read_ir_metadata(xml: Path, model=None) -> dict:
    """metadata.json beside the IR, else the IR's rt_info."""
    side = xml.parent / METADATA_FILE
    if side.is_file():
        meta = json.loads(side.read_text(encoding="utf-8"))
    elif model is not None and model.has_rt_info(RT_INFO_PATH):
        meta = json.loads(model.get_rt_info(RT_INFO_PATH).astype(str))
    else:
        raise ValueError(f"{xml}: not a DynamicDet OpenVINO export (no {METADATA_FILE} and no dydet rt_info); "
                         "convert an export.py ONNX file with utils.export.openvino.export_openvino")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{xml}: metadata format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def compile_config(precision: str = "f32", threads: int | None = None) -> dict:
    """OpenVINO CPU properties: precision hint, latency mode, thread count."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    precision = PRECISIONS[precision]
    if precision == "bf16":
        require_bf16(what="OpenVINO bf16 inference (precision='bf16')")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVinoModel(ExportBackend):
    """An OpenVINO IR of an export run on the CPU, called like the PyTorch model."""

    format = "openvino"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                 precision: str | None = None) -> None:
        ov = openvino_module()
        self.xml = find_xml(path)
        self.path = self.xml.parent if Path(path).is_dir() else self.xml
        self.device = torch.device(device)
        if self.device.type != "cpu":
            LOGGER.warning("OpenVINO runs %s on the CPU; outputs are moved to %s", self.xml.name, self.device)
        core = ov.Core()
        try:
            model = core.read_model(str(self.xml))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{self.xml}: not an OpenVINO IR ({describe_file(self.xml)})") from e
        self.meta = read_ir_metadata(self.xml, model)
        if precision is None:  # the IR's default; an INT8 IR runs its non-quantized ops in fp32
            precision = self.meta["openvino"].get("precision", "f32")
        self.threads = int(threads) if threads else None
        self.config = compile_config(precision, threads)
        self.precision = self.config["INFERENCE_PRECISION_HINT"]
        self.compiled = compile_cpu(model, self.config, core)
        self.request = self.compiled.create_infer_request()
        self._configure(self.meta)

    def _configure(self, meta: dict) -> None:
        super()._configure(meta, precision=self.precision)
        self.int8 = meta["openvino"].get("int8")
        warn_if_unsafe(self.int8, self.file_name)
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]

    @property
    def file_name(self) -> str:
        return self.xml.name

    def __repr__(self) -> str:
        if not hasattr(self, "meta"):
            return f"OpenVinoModel({self.xml.name})"
        kind = "dynamic" if self.is_dynamic else f"route={self.route}"
        q = ", int8" if self.int8 else ""
        return (f"OpenVinoModel({self.xml.name}, {kind}, img_size={self.img_size}, "
                f"batch={self.batch or 'dynamic'}, {self.precision}{q})")

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One raw inference: numpy inputs by name -> outputs in ``output_names`` order (copies)."""
        res = self.request.infer(feed)
        return [np.array(res[o]) for o in self.compiled.outputs]

    def runtime_precisions(self) -> dict[str, int]:
        """How many executed layers run in each precision (e.g. {'u8': 120, 'f32': 40}): what
        the CPU plug-in actually does with the hint and the IR."""
        counts: dict[str, int] = {}
        for op in _runtime_ops(self.compiled.get_runtime_model()):
            info = op.get_rt_info()
            if "runtimePrecision" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS:
                p = info["runtimePrecision"].astype(str)
                counts[p] = counts.get(p, 0) + 1
        return counts


_COMPUTE_LAYERS = {"Convolution", "FullyConnected", "MatMul", "Deconvolution"}


def _runtime_ops(model):
    for op in model.get_ordered_ops():
        yield op
        if hasattr(op, "get_function") and _n_bodies(op):
            for i in range(_n_bodies(op)):
                yield from _runtime_ops(op.get_function(i))
