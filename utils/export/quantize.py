"""INT8 post-training quantization of exported detectors, with the route kept in the graph.

**OpenVINO + NNCF** (:func:`quantize_openvino`). NNCF quantizes an OpenVINO model with ``If``
ops body by body: it runs the calibration set through the model, splits the samples by the
condition each ``If`` saw, and quantizes the then and else bodies with the samples that took
them. So every calibration image is fed twice, with threshold 1 (detector 1) and threshold 0
(detector 2): both branches see the same images, whatever their φ. A graph with its threshold
built in can only route by φ; both routes must then occur among the calibration images.

What stays float (NNCF's ignored scope; the peers' practice for YOLO heads):

* the router — global pools, the two FC layers, the sigmoid — and the route decision (φ >
  threshold). Quantizing them moves φ by a quantization step, enough to reorder images and
  send some of them the other way; φ must rank images as the fp32 model does;
* the box decode after each detector's output convolutions (sigmoid, grid and anchor
  arithmetic, the concatenation of the levels): coordinates in pixels and class scores are
  kept at float precision, only the convolutions that feed them run in INT8.

:func:`quantization_report` counts FakeQuantize ops and int8 weights per ``If`` body, so one
can see that both detectors were quantized (a body the calibration never reached stays float).

**ONNX Runtime** (:func:`quantize_onnx`): static QDQ quantization of a *single-route* export
(``export.py --route easy`` / ``--route hard``, or a plain model). ONNX Runtime's quantizer
cannot quantize the routed graph: its calibrators add ReduceMin/ReduceMax outputs only for
tensors of the top-level graph (``select_tensors_to_calibrate`` walks ``model.graph.node``), so
no tensor inside an ``If`` branch gets a range; the QDQ quantizer then walks the top-level
nodes only and leaves both branches in float (backbone 1 alone is quantized), and the
QOperator format's ``EnableSubgraph`` option recurses into the branches but, lacking ranges,
fails on their first Conv (``AttributeError: 'NoneType' object has no attribute 'append'`` in
``operators/conv.py``, onnxruntime 1.32). NNCF's ONNX backend has the same top-level-only
behaviour. So :func:`quantize_onnx` refuses a routed graph and says what to do instead.

**Saturation.** On a CPU without VNNI both runtimes multiply u8 activations by s8 weights with
``vpmaddubsw``, whose int16 pair sums clamp when the operands are full range
(:func:`utils.cpu.int8_saturates`). With ``saturation_safe`` (the default) every weight is
quantized to 7 bits (ONNX Runtime's ``reduce_range``, NNCF's ``OverflowFix.ENABLE``): the pair
sums then fit and the file computes the same on every x86 CPU, with or without VNNI, at the
same speed (the kernels are the same). Without it ONNX Runtime uses 8-bit weights and NNCF its
own default (7 bits for the first convolution only). The choice is recorded in the metadata;
:func:`utils.runtime.saturation.warn_if_unsafe` warns once when such a file runs on a CPU that
lacks VNNI.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from utils.export import openvino as ovx
from utils.runtime.openvino_model import compile_cpu
from utils.runtime.saturation import saturation_record
from utils.sigaltstack import kept_sigaltstack

LOGGER = logging.getLogger(__name__)
KEEP_FLOAT = ("router", "decode")
ROUTE_OPS = ("Greater", "Less", "LessEqual", "GreaterEqual", "LogicalOr", "LogicalAnd", "LogicalNot")


# ---- calibration data -----------------------------------------------------------------------------
def calibration_images(source, img_size: int | tuple[int, int], n: int = 300, stride: int = 32) -> torch.Tensor:
    """Up to ``n`` images from ``source`` letterboxed to ``img_size`` as detect.py does for a
    fixed-size export: float (n, 3, h, w) RGB in [0, 1].

    ``source``: a folder or file of images, a list of paths, a dataset YAML (its ``train``
    split), or a tensor already in that form (returned, cut to ``n``).
    """
    if isinstance(source, torch.Tensor):
        return source[:n].float()
    from utils.data.sources import open_source
    from utils.inference.transform import LetterboxTransform
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    src = Path(source) if isinstance(source, (str, Path)) else None
    if src is not None and src.suffix.lower() in (".yaml", ".yml"):
        from utils.data.config import load_data_config
        source = [str(p) for p in load_data_config(src, require=("train",)).split("train")]
        if len(source) == 1:
            source = source[0]
    frames = []
    for frame in open_source(source):
        frames.append(frame.img)
        if len(frames) >= n:
            break
    if not frames:
        raise ValueError(f"no calibration images found in {source}")
    transform = LetterboxTransform(max(hw), stride, shape=hw)
    imgs, _ = transform.batch(frames)
    return transform.normalize(imgs, "cpu")


def calibration_feeds(images: torch.Tensor, threshold_input: bool, batch: int | None = 1,
                      thresholds: Sequence[float] = (1.0, 0.0)) -> list[dict[str, np.ndarray]]:
    """Model inputs for calibration: every chunk of ``batch`` images once per threshold (so each
    route sees every image), or once when the graph takes no threshold."""
    arr = images.detach().cpu().float().contiguous().numpy()
    step = batch or 1
    feeds = []
    for start in range(0, len(arr) - step + 1, step):
        chunk = arr[start:start + step]
        if threshold_input:
            feeds += [{"images": chunk, "threshold": np.asarray(t, np.float32)} for t in thresholds]
        else:
            feeds.append({"images": chunk})
    return feeds


# ---- what stays float -----------------------------------------------------------------------------
def _producers(op):
    return [op.input(i).get_source_output().get_node() for i in range(op.get_input_size())]


def _is_conv_bias_add(op) -> bool:
    return op.get_type_name() == "Add" and any(p.get_type_name() == "Convolution" for p in _producers(op))


def _walk_back(starts, stop_before, stop_after) -> set[str]:
    """Friendly names of the ops reached backwards from ``starts``; ``stop_before(op)`` ops are
    not entered, ``stop_after(op)`` ops are included but not walked through."""
    seen, names, stack = set(), set(), list(starts)
    while stack:
        op = stack.pop()
        key = (op.get_type_name(), op.get_friendly_name())  # wrappers are rebuilt per call: no id()
        if key in seen:
            continue
        seen.add(key)
        t = op.get_type_name()
        if t in ("Constant", "Parameter", "If") or stop_before(op):
            continue
        if t != "Result":
            names.add(op.get_friendly_name())
        if not stop_after(op):
            stack.extend(_producers(op))
    return names


def float_scope(model, keep_float: Sequence[str] = KEEP_FLOAT) -> dict[str, list[str]]:
    """Op names that must stay float, by reason: ``router`` (the router and the route decision,
    walked back from the ``phi`` / ``hard`` outputs to the router's global pools) and ``decode``
    (everything between each detector's output convolutions and its prediction, in every body)."""
    unknown = set(keep_float) - set(KEEP_FLOAT)
    if unknown:
        raise ValueError(f"keep_float takes {KEEP_FLOAT}, not {sorted(unknown)}")
    scope = {}
    results = {name: r for r in model.get_results() for name in r.input(0).get_source_output().get_names()}
    if "router" in keep_float:
        starts = [r for name, r in results.items() if name in ("phi", "hard")]
        scope["router"] = sorted(_walk_back(starts, lambda op: False,
                                            lambda op: op.get_type_name() in ("ReduceMean", "ReduceSum")))
    if "decode" in keep_float:
        names: set[str] = set()
        bodies = [model] + [b for _, b in ovx.if_bodies(model)]
        for body in bodies:
            starts = [r for r in body.get_results()
                      if body is not model or {"pred", "dets"} & set(r.input(0).get_source_output().get_names())]
            names |= _walk_back(starts, lambda op: op.get_type_name() == "Convolution" or _is_conv_bias_add(op),
                                lambda op: False)
        scope["decode"] = sorted(names)
    return scope


# ---- OpenVINO / NNCF ------------------------------------------------------------------------------
def _load_ir(model_or_ir):
    """(ov.Model, metadata, source path, name) from an IR folder/.xml, an ONNX file or (ov.Model, meta)."""
    ov = ovx.openvino_module()
    if isinstance(model_or_ir, tuple):
        model, meta = model_or_ir
        return model, dict(meta), None, "model"
    path = Path(model_or_ir)
    if path.suffix.lower() == ".onnx":
        model, meta = ovx.convert_onnx(path)
        return model, ovx.ir_metadata(meta, path, if_count=meta["_if_count"]), path, path.stem
    xml = ovx.find_xml(path)
    model = ov.Core().read_model(str(xml))
    return model, ovx.read_ir_metadata(xml, model), xml, xml.stem


def quantization_report(model) -> dict[str, dict[str, int]]:
    """Per graph (``main`` and every ``If`` body): convolutions, int8 weight constants and
    FakeQuantize / FakeConvert ops."""
    def count(body) -> dict[str, int]:
        ops = list(body.get_ordered_ops())
        return {"Convolution": sum(o.get_type_name() == "Convolution" for o in ops),
                "int8_weights": sum(o.get_type_name() == "Constant" and o.get_element_type().get_type_name() in
                                    ("i8", "u8") for o in ops),
                "FakeQuantize": sum(o.get_type_name() == "FakeQuantize" for o in ops),
                "FakeConvert": sum(o.get_type_name() == "FakeConvert" for o in ops)}
    return {"main": count(model), **{name: count(body) for name, body in ovx.if_bodies(model)}}


def _ignored(model, keep_float: Sequence[str]):
    import nncf
    scope = float_scope(model, keep_float)
    names = sorted({n for v in scope.values() for n in v})
    types = list(ROUTE_OPS) if "router" in keep_float else []
    return nncf.IgnoredScope(names=names, types=types, validate=False), scope


def quantize_openvino(model_or_ir, calibration, out_dir: str | Path | None = None, *, n: int = 300,
                      keep_float: Sequence[str] = KEEP_FLOAT, preset: str = "mixed",
                      fast_bias_correction: bool = True, thresholds: Sequence[float] = (1.0, 0.0),
                      check: bool = True, threads: int | None = None, saturation_safe: bool = True) -> Path:
    """INT8 IR of an OpenVINO export (folder / .xml, or an export.py ``.onnx``) -> ``out_dir``.

    ``calibration``: images for :func:`calibration_images` (a folder, a dataset YAML, a tensor),
    at most ``n`` of them, each fed once per threshold in ``thresholds`` when the graph takes
    one. ``keep_float``: see the module notes. ``preset``: NNCF's ``mixed`` (asymmetric
    activations, suits LeakyReLU/SiLU outputs) or ``performance`` (symmetric). ``out_dir``
    defaults to ``<name>_int8_openvino`` beside the source. The folder is written atomically;
    ``check`` makes sure both ``If`` bodies of every conditional hold INT8 weights (else the
    calibration did not reach a route) and that the IR compiles. ``saturation_safe``: 7-bit
    weights in every layer (see the module notes).
    """
    import nncf
    model, meta, src, name = _load_ir(model_or_ir)
    if meta.get("openvino", {}).get("int8"):
        raise ValueError(f"{src or 'the model'} is already INT8")
    images = calibration_images(calibration, tuple(meta["img_size"]), n)
    feeds = calibration_feeds(images, bool(meta["threshold_input"]), meta["batch"] or 1, thresholds)
    if meta["dynamic"] and not meta["threshold_input"]:
        _check_routes_reached(model, feeds, meta)
    ignored, scope = _ignored(model, keep_float)
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, not {preset!r}")
    fix = nncf.OverflowFix.ENABLE if saturation_safe else nncf.OverflowFix.FIRST_LAYER
    with kept_sigaltstack():  # NNCF compiles models of its own for the statistics
        quantized = nncf.quantize(model, nncf.Dataset(feeds), preset=presets[preset], subset_size=len(feeds),
                                  fast_bias_correction=fast_bias_correction, ignored_scope=ignored,
                                  target_device=nncf.TargetDevice.CPU,
                                  advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=fix))
    report = quantization_report(quantized)
    if check:
        _check_bodies_quantized(report)
    meta = dict(meta)
    meta["openvino"] = {**meta.get("openvino", {}), "precision": "f32", "compress_to_fp16": False,
                        "int8": {"tool": f"nncf {nncf.__version__}", "preset": preset,
                                 "calibration_images": len(images), "calibration_feeds": len(feeds),
                                 "thresholds": list(thresholds) if meta["threshold_input"] else None,
                                 "fast_bias_correction": fast_bias_correction, "keep_float": list(keep_float),
                                 "float_ops": {k: len(v) for k, v in scope.items()}, "report": report,
                                 "overflow_fix": str(fix.value), **saturation_record(saturation_safe),
                                 "source": str(src) if src else None}}
    if out_dir is None:
        base = Path(src).parent if src is not None else Path(".")
        stem = base.name[: -len(ovx.SUFFIX)] if base.name.endswith(ovx.SUFFIX) else name
        parent = base.parent if base.name.endswith(ovx.SUFFIX) else base
        out_dir = parent / f"{stem}_int8{ovx.SUFFIX}"

    def verify(folder: Path) -> None:
        ovx.OpenVinoModel(folder, threads=threads)  # compiles

    return ovx.save_ir(quantized, Path(out_dir), meta, name, check=verify if check else None)


def _check_bodies_quantized(report: dict[str, dict[str, int]]) -> None:
    """Every If body with convolutions must hold INT8 weights."""
    float_bodies = [k for k, v in report.items() if k != "main" and v["Convolution"] and not v["int8_weights"]]
    if float_bodies:
        raise RuntimeError(f"NNCF left these If bodies in float: {float_bodies}; the calibration images never "
                           "took that route (feed them with threshold 1 and 0, or include easier/harder images)")


def _check_routes_reached(model, feeds: list[dict], meta: dict) -> None:
    """A built-in threshold: the calibration images must take both routes on their own φ."""
    compiled = compile_cpu(model, {"INFERENCE_PRECISION_HINT": "f32"})
    hard = compiled.outputs[[o.get_any_name() for o in compiled.outputs].index("hard")]
    n_hard = sum(int(np.asarray(compiled(f)[hard]).sum()) for f in feeds)
    n_all = sum(len(f["images"]) for f in feeds)
    if n_hard in (0, n_all):
        route = "easy" if n_hard == 0 else "hard"
        raise ValueError(f"the graph has threshold {meta['threshold']:g} built in and all {n_all} calibration images "
                         f"take the {route} route, so the other detector cannot be calibrated; use images of "
                         "varied difficulty or an export with --thres-input")


# ---- ONNX Runtime ---------------------------------------------------------------------------------
def onnx_has_if(proto: onnx.ModelProto) -> bool:
    return any(n.op_type == "If" for n in proto.graph.node)


def onnx_float_nodes(proto: onnx.ModelProto, keep_float: Sequence[str] = KEEP_FLOAT) -> list[str]:
    """Node names of a single-route ONNX graph that stay float: the router (from ``phi`` back to
    its ReduceMean pools) and the decode (from ``pred`` back to the output Convs)."""
    producer = {o: n for n in proto.graph.node for o in n.output}

    def walk(outputs: Iterable[str], stop_before: set[str], stop_after: set[str]) -> set[str]:
        names, stack, seen = set(), list(outputs), set()
        while stack:
            v = stack.pop()
            node = producer.get(v)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in stop_before:
                continue
            names.add(node.name)
            if node.op_type not in stop_after:
                stack.extend(node.input)
        return names

    out: set[str] = set()
    outputs = {o.name for o in proto.graph.output}
    if "router" in keep_float and "phi" in outputs:
        out |= walk(["phi"], set(), {"ReduceMean", "GlobalAveragePool"})
    if "decode" in keep_float:
        out |= walk([o for o in ("pred", "dets") if o in outputs], {"Conv"}, set())
    return sorted(n for n in out if n)


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.feeds)


def quantize_onnx(onnx_path: str | Path, calibration, out_path: str | Path | None = None, *, n: int = 300,
                  keep_float: Sequence[str] = KEEP_FLOAT, per_channel: bool = True,
                  method: str = "minmax", saturation_safe: bool = True) -> Path:
    """Static QDQ INT8 (u8 activations, s8 per-channel weights) of a single-route ONNX export.

    ``saturation_safe``: 7-bit weights (``reduce_range``), exact on CPUs without VNNI too.

    A routed export (with ``If``) is refused (see the module notes). ``out_path`` defaults to
    ``<name>-int8.onnx``; the export metadata is kept (with a ``quantization`` record) so
    :class:`utils.runtime.onnx_model.OnnxModel` loads the file like any export.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    proto = onnx.load(str(onnx_path))
    meta = ovx.onnx_metadata(proto, onnx_path)
    if onnx_has_if(proto):
        raise ValueError(
            f"{onnx_path.name} keeps the route in an If: ONNX Runtime's static quantization calibrates and "
            "quantizes only top-level tensors, so both detectors would stay float. Quantize the static "
            "single-route exports instead (export.py --route easy / --route hard), or the routed graph "
            "with OpenVINO (quantize_openvino)")
    if meta.get("quantization"):
        raise ValueError(f"{onnx_path.name} is already quantized")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, not {method!r}")
    images = calibration_images(calibration, tuple(meta["img_size"]), n)
    feeds = calibration_feeds(images, False, meta["batch"] or 1)
    exclude = onnx_float_nodes(proto, keep_float)
    out_path = Path(out_path) if out_path is not None else onnx_path.with_name(f"{onnx_path.stem}-int8.onnx")
    with tempfile.TemporaryDirectory(prefix="dydet-q-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(q), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=saturation_safe,
                        calibrate_method=methods[method], nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        out = onnx.load(str(q))
        meta["quantization"] = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                                "activations": "u8 asymmetric", "weights": ("s7" if saturation_safe else "s8") +
                                " symmetric" + (" per channel" if per_channel else ""), "method": method,
                                "calibration_images": len(images), "float_nodes": len(exclude),
                                **saturation_record(saturation_safe), "source": str(onnx_path)}
        del out.metadata_props[:]
        onnx.helper.set_model_props(out, {k: json.dumps(v) for k, v in meta.items()})
        from utils.io import atomic_write
        atomic_write(out_path, lambda p: onnx.save(out, str(p)), lambda p: onnx.checker.check_model(str(p)))
    return out_path
