"""OpenVINO export: our ONNX export -> an IR folder that keeps the route, checked against ONNX Runtime.

:func:`export_openvino` converts an ``export.py`` ONNX file with OpenVINO's ONNX frontend. The
route stays what it is in the ONNX graph: one ``If`` for a batch-1 graph (backbone 1 and the
router outside, detector 1's head in one body, backbone 2 + detector 2 in the other, each body
holding its own weights), two for a batched graph (each subset's detector runs only when the
subset is not empty). The folder ``<name>_openvino/`` holds ``<name>.xml`` / ``<name>.bin`` and
``metadata.json``; the same JSON is stored in the IR's ``rt_info`` (``dydet/metadata``), so the
``.xml`` alone is enough. The folder is written under a temporary name, checked (it compiles and
matches ONNX Runtime per route) and only then renamed: a failed export leaves nothing behind.
The backend that runs the folder is :class:`utils.runtime.openvino_model.OpenVinoModel`.

One rewrite happens on the way: OpenVINO's ONNX frontend reads an empty ``Constant`` (the
``(0, N, 5 + nc)`` result of a batched graph's "no image on this route" branch) as a scalar,
which gives the ``If`` a dynamic-rank output that the CPU plug-in refuses ("CPU plug-in doesn't
support If operation with dynamic rank"). Such constants become ``ConstantOfShape`` of their
static shape, which the frontend keeps exact.
"""
from __future__ import annotations

import datetime
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from utils.runtime.openvino_model import (  # noqa: F401  (re-exported: the backend's names)
    FORMAT,
    METADATA_FILE,
    RT_INFO_PATH,
    SUFFIX,
    OpenVinoModel,
    count_ops,
    find_xml,
    if_bodies,
    is_openvino,
    openvino_module,
    ov_version,
    read_ir_metadata,
)
from utils.export.parity import difference
from utils.io import atomic_write_dir

ONNX_FORMAT = "dydet-onnx-v1"  # what utils.runtime.onnx_model writes (checked on the source file)


# ---- paths --------------------------------------------------------------------------------------
def default_dir(onnx_path: str | Path) -> Path:
    """``best.onnx`` -> ``best_openvino/`` beside it."""
    p = Path(onnx_path)
    return p.with_name(p.stem + SUFFIX)


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


def convert_onnx(onnx_path: str | Path):
    """``(ov.Model, metadata)`` of an export.py ONNX file (see :func:`fix_empty_constants`)."""
    ov = openvino_module()
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
    only then it replaces ``out_dir`` (:func:`utils.io.atomic_write_dir`: one atomic swap on
    Linux). On any failure, a full disk or a kill, ``out_dir`` keeps the previous export.
    """
    ov = openvino_module()

    def write(tmp: Path) -> None:
        ir = model.clone()
        ir.set_rt_info(json.dumps(meta), RT_INFO_PATH)
        ov.save_model(ir, str(tmp / f"{name}.xml"), compress_to_fp16=compress_to_fp16)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    return atomic_write_dir(out_dir, write, check)


def export_openvino(onnx_path: str | Path, out_dir: str | Path | None = None, *, compress_to_fp16: bool = False,
                    check: bool = True, atol: float = 1e-3, threads: int | None = None) -> Path:
    """Convert an export.py ONNX file to ``<name>_openvino/`` (or ``out_dir``); returns the folder.

    ``compress_to_fp16`` stores the weights as fp16 (half the file; the CPU still computes in
    fp32 after decompressing them on load). ``check``: the written IR must compile and match
    ONNX Runtime on probe images on every route: |OpenVINO - ONNX Runtime| / max(1, |ONNX Runtime|)
    <= atol (:func:`parity_with_onnx`). The relative part is for box sizes: flat probe images
    make a trained detector predict boxes of 300-1500 px, where two correct fp32 backends (ONNX
    Runtime and PyTorch too) differ by up to 5e-3 px (about 1e-5 relative) after 60
    convolutions summed in different orders; scores in [0, 1] are compared absolutely.
    """
    onnx_path = Path(onnx_path)
    model, meta = convert_onnx(onnx_path)
    out_dir = Path(out_dir) if out_dir is not None else default_dir(onnx_path)
    meta = ir_metadata(meta, onnx_path, if_count=meta["_if_count"], compress_to_fp16=bool(compress_to_fp16))

    def verify(folder: Path) -> None:
        diffs = parity_with_onnx(folder, onnx_path, threads=threads)
        bad = {k: v for k, v in diffs.items() if v is not None and not v <= atol}
        if bad:
            raise RuntimeError(f"OpenVINO IR differs from ONNX Runtime by more than {atol:g} (relative for |value| > 1): {bad}")

    return save_ir(model, out_dir, meta, onnx_path.stem, compress_to_fp16, verify if check else None)


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


def parity_with_onnx(ir: str | Path, onnx_path: str | Path, threads: int | None = None,
                     n: int = 4) -> dict[str, float | None]:
    """OpenVINO against ONNX Runtime per route on ``n`` probe images (threshold 1 / 0 where it is
    an input; a batched graph also on a mixed batch split at the widest gap of its φ), measured
    by :func:`utils.export.parity.difference` (scores absolute, pixel coordinates relative)."""
    from utils.runtime.onnx_model import OnnxModel
    got, ref = OpenVinoModel(ir, threads=threads), OnnxModel(onnx_path, threads=threads)
    x = probe_inputs(ref.img_size, max(n, got.batch or 1))

    def diff(t=None):
        if t is None:
            return difference(got(x), ref(x))
        return difference(got(x, threshold=t), ref(x, threshold=t))

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
