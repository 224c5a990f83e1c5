"""OpenVINO: our ONNX export -> an IR folder, and a backend called like the PyTorch model.

:func:`export_openvino` converts an ``export.py`` ONNX file with OpenVINO's ONNX frontend. The
route stays what it is in the ONNX graph: one ``If`` for a batch-1 graph (backbone 1 and the
router outside, detector 1's head in one body, backbone 2 + detector 2 in the other, each body
holding its own weights), two for a batched graph (each subset's detector runs only when the
subset is not empty). The folder ``<name>_openvino/`` holds ``<name>.xml`` / ``<name>.bin`` and
``metadata.json``; the same JSON is stored in the IR's ``rt_info`` (``dydet/metadata``), so the
``.xml`` alone is enough. The folder is written under a temporary name, checked (it compiles and
matches ONNX Runtime per route) and only then renamed: a failed export leaves nothing behind.

One rewrite happens on the way: OpenVINO's ONNX frontend reads an empty ``Constant`` (the
``(0, N, 5 + nc)`` result of a batched graph's "no image on this route" branch) as a scalar,
which gives the ``If`` a dynamic-rank output that the CPU plug-in refuses ("CPU plug-in doesn't
support If operation with dynamic rank"). Such constants become ``ConstantOfShape`` of their
static shape, which the frontend keeps exact.

:class:`OpenVinoModel` mirrors :class:`utils.export.onnx_model.OnnxModel`: ``model(x,
threshold=None)`` returns a :class:`models.dynamic.DyOutput` for a routed graph, the prediction
otherwise; ``names``, ``stride``, ``img_size``, ``is_dynamic``, ``end2end``, ``info``, ``eval()``.
It compiles for the CPU in fp32 unless told otherwise: OpenVINO's own default on a CPU with
AVX512_BF16 or AMX is bf16, which would silently change the numbers. ``precision='bf16'`` asks
for bf16 explicitly and is refused with a ValueError on a CPU without native bf16.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from models.dynamic import DyOutput
from utils.cpu import require_bf16
from utils.io import file_mode, fsync_path

LOGGER = logging.getLogger(__name__)
FORMAT = "dydet-openvino-v1"
ONNX_FORMAT = "dydet-onnx-v1"  # what utils.export.onnx_model writes (checked on the source file)
METADATA_FILE = "metadata.json"
RT_INFO_PATH = ["dydet", "metadata"]
SUFFIX = "_openvino"
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}


def _ov():
    try:
        import openvino as ov
    except ImportError as e:  # optional dependency
        raise ImportError("OpenVINO is not installed: pip install openvino") from e
    return ov


def ov_version() -> str:
    return _ov().get_version()


# ---- paths --------------------------------------------------------------------------------------
def default_dir(onnx_path: str | Path) -> Path:
    """``best.onnx`` -> ``best_openvino/`` beside it."""
    p = Path(onnx_path)
    return p.with_name(p.stem + SUFFIX)


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


# ---- ONNX -> OpenVINO -----------------------------------------------------------------------------
def onnx_metadata(proto: onnx.ModelProto, path: Path | str = "model.onnx") -> dict:
    """Our export metadata from an ONNX model's metadata_props (values are JSON)."""
    meta = {}
    for p in proto.metadata_props:
        try:
            meta[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            meta[p.key] = p.value
    if meta.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path}: not a DynamicDet ONNX export (no {ONNX_FORMAT} metadata); export it with export.py")
    return meta


def _subgraphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _subgraphs(g)


def fix_empty_constants(proto: onnx.ModelProto) -> int:
    """Replace every ``Constant`` with a zero-size tensor by ``ConstantOfShape`` (in place).

    OpenVINO's ONNX frontend turns an empty constant into a scalar; ``ConstantOfShape`` keeps
    its shape. Returns how many were replaced.
    """
    count = 0
    for graph in _subgraphs(proto.graph):
        nodes = []
        for node in graph.node:
            value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                         None)
            if node.op_type != "Constant" or value is None or 0 not in value.dims:
                nodes.append(node)
                continue
            dtype = helper.tensor_dtype_to_np_dtype(value.data_type)
            shape_name = f"{node.output[0]}__shape"
            nodes.append(helper.make_node("Constant", [], [shape_name], name=f"{node.name or node.output[0]}__shape",
                                          value=numpy_helper.from_array(np.asarray(value.dims, np.int64))))
            nodes.append(helper.make_node("ConstantOfShape", [shape_name], list(node.output),
                                          name=node.name or node.output[0],
                                          value=numpy_helper.from_array(np.zeros(1, dtype))))
            count += 1
        del graph.node[:]
        graph.node.extend(nodes)
    return count


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


def convert_onnx(onnx_path: str | Path):
    """``(ov.Model, metadata)`` of an export.py ONNX file (see :func:`fix_empty_constants`)."""
    ov = _ov()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {str(onnx_path)!r} not found")
    proto = onnx.load(str(onnx_path))
    meta = onnx_metadata(proto, onnx_path)
    n_ifs = sum(n.op_type == "If" for g in _subgraphs(proto.graph) for n in g.node)
    fixed = fix_empty_constants(proto)
    with tempfile.TemporaryDirectory(prefix="dydet-ov-") as tmp:
        src = onnx_path
        if fixed:
            src = Path(tmp) / onnx_path.name
            onnx.save(proto, str(src))
        model = ov.convert_model(str(src))
    got_ifs = count_ops(model, "If")
    if got_ifs != n_ifs:
        raise RuntimeError(f"{onnx_path.name}: OpenVINO's model has {got_ifs} If ops, the ONNX graph {n_ifs}")
    names = [o.get_any_name() for o in model.outputs]
    if not {"pred", "dets"} & set(names):
        raise RuntimeError(f"{onnx_path.name}: unexpected OpenVINO outputs {names}")
    return model, {**meta, "_if_count": n_ifs}


def ir_metadata(meta: dict, onnx_path: Path, **extra) -> dict:
    """The IR's metadata: the ONNX export's, with this format and the conversion recorded."""
    meta = {k: v for k, v in meta.items() if not k.startswith("_")}
    ov_info = {"version": ov_version(), "source": str(onnx_path), "source_format": meta.get("format"),
               "if_count": extra.pop("if_count", None), "precision": "f32", "compress_to_fp16": False,
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **extra}
    return {**meta, "format": FORMAT, "openvino": ov_info}


def save_ir(model, out_dir: str | Path, meta: dict, name: str, compress_to_fp16: bool = False,
            check: Callable[[Path], None] | None = None) -> Path:
    """Write ``<out_dir>/<name>.xml/.bin`` + ``metadata.json`` atomically; returns ``out_dir``.

    Everything goes to a temporary folder beside ``out_dir``, ``check(folder)`` runs on it, and
    only then it replaces ``out_dir`` (an old folder of that name is removed once the new one
    is in place). On any failure the temporary folder is deleted and ``out_dir`` is untouched.
    """
    ov = _ov()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    old = None
    try:
        model = model.clone()
        model.set_rt_info(json.dumps(meta), RT_INFO_PATH)
        ov.save_model(model, str(tmp / f"{name}.xml"), compress_to_fp16=compress_to_fp16)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        _settle(tmp)
        if check is not None:
            check(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / out_dir.name).exists() and not out_dir.exists():
            os.replace(old / out_dir.name, out_dir)  # put the previous export back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    fsync_path(out_dir.parent)
    return out_dir


def _settle(folder: Path) -> None:
    """The usual permissions (mkdtemp makes 0700) and every file flushed before the rename."""
    mode = file_mode()
    for f in folder.iterdir():
        os.chmod(f, mode)
        fsync_path(f)
    os.chmod(folder, mode | (mode & 0o444) >> 2)  # directories also get x where they get r
    fsync_path(folder)


def export_openvino(onnx_path: str | Path, out_dir: str | Path | None = None, *, compress_to_fp16: bool = False,
                    check: bool = True, atol: float = 1e-3, rtol: float = 1e-4, threads: int | None = None) -> Path:
    """Convert an export.py ONNX file to ``<name>_openvino/`` (or ``out_dir``); returns the folder.

    ``compress_to_fp16`` stores the weights as fp16 (half the file; the CPU still computes in
    fp32 after decompressing them on load). ``check``: the written IR must compile and match
    ONNX Runtime on probe images on every route: |OpenVINO - ONNX Runtime| <= atol + rtol x
    |ONNX Runtime| (:func:`parity_with_onnx`). The relative part is for box sizes: flat probe
    images make a trained detector predict boxes of 300-1500 px, where two correct fp32
    backends (ONNX Runtime and PyTorch too) differ by up to 5e-3 px (about 1e-5 relative) after
    60 convolutions summed in different orders; scores in [0, 1] still get about 1e-3.
    """
    onnx_path = Path(onnx_path)
    model, meta = convert_onnx(onnx_path)
    out_dir = Path(out_dir) if out_dir is not None else default_dir(onnx_path)
    meta = ir_metadata(meta, onnx_path, if_count=meta["_if_count"], compress_to_fp16=bool(compress_to_fp16))

    def verify(folder: Path) -> None:
        diffs = parity_with_onnx(folder, onnx_path, threads=threads, rtol=rtol)
        bad = {k: v for k, v in diffs.items() if v is not None and not v <= atol}
        if bad:
            raise RuntimeError(f"OpenVINO IR differs from ONNX Runtime by more than {atol:g} + {rtol:g} x |value|: {bad}")

    return save_ir(model, out_dir, meta, onnx_path.stem, compress_to_fp16, verify if check else None)


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


class OpenVinoModel:
    """An OpenVINO IR of an export run on the CPU, called like the PyTorch model."""

    fused = True
    training = False

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                 precision: str | None = None) -> None:
        ov = _ov()
        self.xml = find_xml(path)
        self.path = self.xml.parent if Path(path).is_dir() else self.xml
        self.device = torch.device(device)
        if self.device.type != "cpu":
            LOGGER.warning("OpenVINO runs %s on the CPU; outputs are moved to %s", self.xml.name, self.device)
        core = ov.Core()
        try:
            model = core.read_model(str(self.xml))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{self.xml}: OpenVINO cannot read it: {e}") from e
        self.meta = read_ir_metadata(self.xml, model)
        if precision is None:  # the IR's default; an INT8 IR runs its non-quantized ops in fp32
            precision = self.meta["openvino"].get("precision", "f32")
        self.config = compile_config(precision, threads)
        self.precision = self.config["INFERENCE_PRECISION_HINT"]
        self.compiled = core.compile_model(model, "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self._configure(self.meta)

    def _configure(self, meta: dict) -> None:
        self.names = list(meta["names"])
        self.stride = torch.tensor(meta["stride"], dtype=torch.float32)
        self.img_size = tuple(int(v) for v in meta["img_size"])
        self.batch = meta["batch"]
        self.is_dynamic = bool(meta["dynamic"])
        self.route = meta["route"]
        self.threshold = meta["threshold"]
        self.threshold_input = bool(meta["threshold_input"])
        self.end2end = meta["end2end"] is not None
        self.nms = dict(meta["end2end"] or {})
        self.gflops = dict(meta.get("gflops") or {})
        self.int8 = meta["openvino"].get("int8")
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.info = {"format": "openvino", "names": list(self.names),
                     "thresholds": dict(meta.get("thresholds") or {}), "meta": meta, "extra": {},
                     "not_loaded": [], "dropped": [], "path": str(self.path), "precision": self.precision}

    # ---- torch.nn.Module look-alikes ------------------------------------------------------------
    def eval(self) -> OpenVinoModel:
        return self

    def train(self, mode: bool = True) -> OpenVinoModel:
        if mode:
            raise RuntimeError("an OpenVINO model cannot be trained")
        return self

    def __repr__(self) -> str:
        if not hasattr(self, "meta"):
            return f"OpenVinoModel({self.xml.name})"
        kind = "dynamic" if self.is_dynamic else f"route={self.route}"
        q = ", int8" if self.int8 else ""
        return (f"OpenVinoModel({self.xml.name}, {kind}, img_size={self.img_size}, "
                f"batch={self.batch or 'dynamic'}, {self.precision}{q})")

    # ---- inference --------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, threshold: float | None = None):
        """Like the PyTorch model: DyOutput (routed exports) or the prediction."""
        self._check_input(x)
        thr = self._threshold(threshold)
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._run_batches(arr, thr)
        pred = self._split(out[0], len(arr)) if self.end2end else out[0]
        if not self.is_dynamic:
            return pred
        return DyOutput(pred, out[self.output_names.index("phi")], out[self.output_names.index("hard")])

    forward = __call__

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.xml.name} takes (batch, 3, h, w) images, got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.img_size:
            h, w = self.img_size
            raise ValueError(f"{self.xml.name} was exported for {h}x{w} inputs but got "
                             f"{x.shape[2]}x{x.shape[3]}; resize the input or re-export with --img-size")

    def _threshold(self, threshold: float | None) -> float | None:
        if not self.is_dynamic:
            return None
        t = float(self.threshold if threshold is None else threshold)
        baked = float(self.meta["threshold"])
        if not self.threshold_input and abs(t - baked) > 1e-9:
            raise ValueError(f"{self.xml.name} has routing threshold {baked:g} built in, so threshold {t:g} "
                             "cannot be used; re-export with --thres-input to choose it at run time")
        return t

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One raw inference: numpy inputs by name -> outputs in ``output_names`` order (copies)."""
        res = self.request.infer(feed)
        return [np.array(res[o]) for o in self.compiled.outputs]

    def _run_batches(self, arr: np.ndarray, threshold: float | None) -> list[torch.Tensor]:
        step = self.batch or len(arr)
        parts = []
        for start in range(0, len(arr), step):
            chunk = arr[start:start + step]
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            feed = {"images": chunk}
            if self.threshold_input:
                feed["threshold"] = np.asarray(threshold, np.float32)
            parts.append(self._trim(self.run(feed), start, n))
        return [torch.from_numpy(np.concatenate(p)).to(self.device) for p in zip(*parts)]

    def _trim(self, outs: list[np.ndarray], start: int, n: int) -> list[np.ndarray]:
        trimmed = []
        for name, o in zip(self.output_names, outs):
            if name == "dets":
                o = o[o[:, 0] < n].copy()
                o[:, 0] += start
                trimmed.append(o)
            else:
                trimmed.append(o[:n])
        return trimmed

    @staticmethod
    def _split(dets: torch.Tensor, n: int) -> list[torch.Tensor]:
        image = dets[:, 0].long()
        return [dets[image == i, 1:] for i in range(n)]

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


# ---- parity ---------------------------------------------------------------------------------------
def probe_inputs(img_size: tuple[int, int], n: int, seed: int = 0) -> torch.Tensor:
    """``n`` varied images in [0, 1]: black, white, two gradients, then seeded noise of falling contrast."""
    g = torch.Generator().manual_seed(seed)
    h, w = img_size
    across = torch.linspace(0, 1, w).expand(3, h, w)
    down = torch.linspace(1, 0, h)[:, None].expand(3, h, w)
    fixed = [torch.zeros(3, h, w), torch.ones(3, h, w), across, down]
    noise = [torch.rand(3, h, w, generator=g) * s for s in torch.linspace(1.0, 0.3, max(n - len(fixed), 1))]
    return torch.stack(fixed + noise)[:n].contiguous()


def max_difference(got, ref, rtol: float = 0.0) -> float:
    """max |got - ref| (minus ``rtol`` x |ref| when given) over DyOutput fields, tensors or
    per-image detections (each detection to its closest counterpart); inf when routes, shapes
    or detection counts differ."""
    if isinstance(ref, DyOutput):
        if not torch.equal(got.hard.cpu().bool(), ref.hard.cpu().bool()):
            return float("inf")
        return max(max_difference(got.pred, ref.pred, rtol), max_difference(got.phi, ref.phi, rtol))
    if isinstance(ref, (list, tuple)):
        if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref)):
            return float("inf")
        diffs = []
        for a, b in zip(got, ref):
            if b.numel():
                a, b = a.float().cpu(), b.float().cpu()
                d = ((a[:, None] - b[None]).abs() - rtol * b[None].abs()).clamp(min=0).amax(-1)
                diffs.append(float(max(d.min(1).values.max(), d.min(0).values.max())))
        return max(diffs, default=0.0)
    if got.shape != ref.shape:
        return float("inf")
    if not ref.numel():
        return 0.0
    a, b = got.float().cpu(), ref.float().cpu()
    return float(((a - b).abs() - rtol * b.abs()).clamp(min=0).max())


def parity_with_onnx(ir: str | Path, onnx_path: str | Path, threads: int | None = None, rtol: float = 0.0,
                     n: int = 4) -> dict[str, float | None]:
    """max |OpenVINO - ONNX Runtime| per route on ``n`` probe images (threshold 1 / 0 where it is
    an input; a batched graph also on a mixed batch split at the widest gap of its φ).
    ``rtol``: see :func:`max_difference`."""
    from utils.export.onnx_model import OnnxModel
    got, ref = OpenVinoModel(ir, threads=threads), OnnxModel(onnx_path, threads=threads)
    x = probe_inputs(ref.img_size, max(n, got.batch or 1))

    def diff(t=None):
        if t is None:
            return max_difference(got(x), ref(x), rtol)
        return max_difference(got(x, threshold=t), ref(x, threshold=t), rtol)

    if not ref.is_dynamic:
        return {"all" if ref.route == "all" else ref.route: diff()}
    if not ref.threshold_input:
        return {"built-in threshold": diff()}
    diffs = {route: diff(t) for route, t in (("easy", 1.0), ("hard", 0.0))}
    if len(x) > 1 and got.batch != 1:
        phi = ref(x, threshold=1.0).phi.sort().values
        gaps = phi[1:] - phi[:-1]
        if float(gaps.max()) > 1e-3:  # a threshold no backend's φ rounds across
            i = int(gaps.argmax())
            thr = float(phi[i] + phi[i + 1]) / 2
            diffs["mixed"] = diff(thr)
        else:
            diffs["mixed"] = None
    return diffs


def parity_with_torch(backend, model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """max |backend - PyTorch| with every image easy (threshold 1) and every image hard (0)."""
    out = {}
    with torch.no_grad():
        for route, t in (("easy", 1.0), ("hard", 0.0)):
            out[route] = max_difference(backend(x, threshold=t), model(x, threshold=t))
    return out
