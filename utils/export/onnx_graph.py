"""Building one ONNX graph from traced stages: the route as a conditional, NMS, metadata.

Each stage (:mod:`models.export_wrappers`) is traced on its own with the TorchScript-based
exporter, then its nodes are copied ("inlined") into the branches of ``If`` nodes. A stage's
weights live in the one branch that runs it, so a route reads only its own weights and the
file holds every weight once; weights that two branches hold alike (DualRes: one detector at two
sizes) are then moved to the outer graph, once, and both branches read them there
(:mod:`utils.export.shared_weights`).
"""
from __future__ import annotations

import io
import itertools
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

DEFAULT_OPSET = 17
IMAGES, THRESHOLD = "images", "threshold"


@dataclass
class Stage:
    """A traced module as an ONNX graph; ``key`` prefixes its weight names when inlined."""

    key: str
    graph: onnx.GraphProto
    used: bool = False

    @property
    def inputs(self) -> list[str]:
        return [v.name for v in self.graph.input]

    @property
    def outputs(self) -> list[str]:
        return [v.name for v in self.graph.output]


def trace_stage(module: torch.nn.Module, args: tuple, key: str, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False) -> Stage:
    """Trace ``module(*args)`` (tensors in, tensors out) into a :class:`Stage`."""
    names_in = [f"in{i}" for i in range(len(args))]
    axes = {n: {0: "batch"} for n in names_in} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter and tracer notices
        torch.onnx.export(module.eval(), args, buf, dynamo=False, opset_version=opset, input_names=names_in,
                          dynamic_axes=axes, do_constant_folding=True)
    graph = onnx.load_from_string(buf.getvalue()).graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise RuntimeError(f"stage {key!r} traced to a graph with subgraphs; cannot inline it")
    return Stage(key, graph)


class Builder:
    """Nodes and weights of one (sub)graph; names stay unique model-wide via a shared counter.

    Weights are attached only once the model is assembled (:meth:`attach_weights`), so the
    nested graphs are copied around without them.
    """

    def __init__(self, counter: Iterator[int] | None = None,
                 pending: dict[str, list[onnx.TensorProto]] | None = None) -> None:
        self.counter = counter if counter is not None else itertools.count()
        self.pending = pending if pending is not None else {}  # graph name -> its weights
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def sub(self) -> Builder:
        return Builder(self.counter, self.pending)

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs) -> str | list[str]:
        names = [f"{op_type}_{next(self.counter)}" for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if n_out == 1 else names

    def const(self, value, dtype=np.float32) -> str:
        name = f"const_{next(self.counter)}"
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(np.asarray(value, dtype=dtype))))
        return name

    def inline(self, stage: Stage, inputs: Sequence[str], tag: str) -> list[str]:
        """Move ``stage``'s nodes and weights here, reading ``inputs``; returns its output names.

        A stage is inlined once: its graph is consumed (renamed in place, not copied).
        """
        if len(inputs) != len(stage.inputs):
            raise ValueError(f"stage {stage.key}: {len(stage.inputs)} inputs expected, got {len(inputs)}")
        if stage.used:
            raise ValueError(f"stage {stage.key} is already inlined")
        stage.used = True
        outputs = stage.outputs
        rename = dict(zip(stage.inputs, inputs))
        for w in stage.graph.initializer:
            rename[w.name] = w.name = f"{stage.key}/{w.name}"
            self.weights.append(w)

        def name(v: str) -> str:
            return rename.setdefault(v, f"{tag}/{v}") if v else v

        for node in stage.graph.node:
            node.input[:] = [name(v) for v in node.input]
            node.output[:] = [name(v) for v in node.output]
            node.name = f"{tag}/{node.name or node.output[0]}"
            self.nodes.append(node)
        return [name(v) for v in outputs]

    def graph(self, name: str, outputs: Sequence[onnx.ValueInfoProto],
              inputs: Sequence[onnx.ValueInfoProto] = ()) -> onnx.GraphProto:
        name = f"{name}_{next(self.counter)}"
        self.pending[name] = self.weights
        return helper.make_graph(self.nodes, name, list(inputs), list(outputs))

    def branch(self, op_outputs: Sequence[str], then: onnx.GraphProto, orelse: onnx.GraphProto,
               cond: str) -> None:
        """``op_outputs = then if cond else orelse`` as an If node."""
        self.nodes.append(helper.make_node("If", [cond], list(op_outputs), name=f"If_{next(self.counter)}",
                                           then_branch=then, else_branch=orelse))

    def attach_weights(self, graph: onnx.GraphProto) -> None:
        """Put every graph's weights into ``graph`` and its subgraphs (in place)."""
        graph.initializer.extend(self.pending.pop(graph.name, []))
        for node in graph.node:
            for attr in node.attribute:
                for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                    self.attach_weights(g)


def tensor_info(name: str, elem: int, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def route_mask(b: Builder, phi: str, thr: str) -> str:
    """hard = φ > thr, all hard when thr <= 0, none when thr >= 1: ``models.route.route_mask`` as
    ONNX ops (tests pin the two together on the edge cases)."""
    zero, one = b.const(0.0), b.const(1.0)
    above = b.op("Or", b.op("Greater", phi, thr), b.op("LessOrEqual", thr, zero))
    return b.op("And", above, b.op("Less", thr, one))


def threshold_mask(b: Builder, phi: str, built_in: float | None) -> str:
    """:func:`route_mask` against the ``threshold`` input, or against ``built_in`` stored under
    that name when the graph has the threshold built in."""
    if built_in is not None:
        b.weights.append(numpy_helper.from_array(np.asarray(built_in, np.float32), THRESHOLD))
    return route_mask(b, phi, THRESHOLD)


def _branch_graph(b: Builder, stage: Stage, inputs: Sequence[str], tag: str, shape: Sequence,
                  gather: str | None = None) -> onnx.GraphProto:
    """A branch running ``stage`` (with its weights) on outer-scope ``inputs``.

    ``gather`` names an index tensor: the branch first picks those images of every input.
    """
    sub = b.sub()
    if gather is not None:
        inputs = [sub.op("Gather", v, gather, axis=0) for v in inputs]
    out = sub.inline(stage, inputs, tag)[0]
    return sub.graph(tag, [tensor_info(out, TensorProto.FLOAT, shape)])


def _empty_graph(b: Builder, shape: Sequence[int], tag: str) -> onnx.GraphProto:
    sub = b.sub()
    out = sub.const(np.zeros((0, *shape), np.float32))
    return sub.graph(tag, [tensor_info(out, TensorProto.FLOAT, [0, *shape])])


def route_single(b: Builder, hard: str, head1: Stage, det2: Stage, feats1: Sequence[str],
                 feats2: Sequence[str], shape: Sequence, tags: tuple[str, str] = ("head1", "det2")) -> str:
    """Batch 1: one If on the image's route; returns the prediction's name. ``tags`` prefix the
    easy and the hard branch's value names."""
    pred = f"pred_{next(b.counter)}"
    b.branch([pred], _branch_graph(b, det2, feats2, tags[1], shape),
             _branch_graph(b, head1, feats1, tags[0], shape), hard)
    return pred


def route_batched(b: Builder, hard: str, head1: Stage, det2: Stage, feats1: Sequence[str],
                  feats2: Sequence[str], shape: Sequence, tags: tuple[str, str] = ("head1", "det2")) -> str:
    """Any batch: detector 1 on the easy images and detector 2 on the hard ones, each run only
    when the batch has such images, then the rows are put back in input order (``tags`` as in
    :func:`route_single`)."""
    per_image = list(shape[1:])
    idx = {}
    for key, mask in (("easy", b.op("Not", hard)), ("hard", hard)):
        idx[key] = b.op("Squeeze", b.op("NonZero", mask), b.const([0], np.int64))
    preds = []
    for key, stage, feats in (("easy", head1, feats1), ("hard", det2, feats2)):
        pred = f"pred_{key}_{next(b.counter)}"
        present = b.op("Greater", b.op("Size", idx[key]), b.const(0, np.int64))
        tag = tags[0] if key == "easy" else tags[1]
        b.branch([pred], _branch_graph(b, stage, feats, tag, [None, *per_image], gather=idx[key]),
                 _empty_graph(b, per_image, f"no_{key}"), present)
        preds.append(pred)
    rows = b.op("Concat", *preds, axis=0)
    order = b.op("Unsqueeze", b.op("Concat", idx["easy"], idx["hard"], axis=0), b.const([1], np.int64))
    return b.op("ScatterND", rows, order, rows)


def _cols(b: Builder, x: str, start: int, end: int, axis: int) -> str:
    return b.op("Slice", x, b.const([start], np.int64), b.const([end], np.int64), b.const([axis], np.int64))


def nms(b: Builder, pred: str, nc: int, conf_thres: float, iou_thres: float, topk: int) -> str:
    """Class-wise NMS (ONNX NonMaxSuppression) of decoded predictions, at most ``topk`` per image.

    Returns ``dets`` (K, 7): image index, x1, y1, x2, y2, score, class; sorted by image, then
    score (highest first). A box is a candidate for every class with obj x cls > ``conf_thres``.
    """
    boxes, scores = _boxes_and_scores(b, pred, nc)
    sel = b.op("NonMaxSuppression", boxes, b.op("Transpose", scores, perm=[0, 2, 1]),
               b.const([topk], np.int64), b.const([iou_thres]), b.const([conf_thres]))
    img, cls, box = (_cols(b, sel, i, i + 1, 1) for i in range(3))  # (K, 1) each
    score = b.op("GatherND", scores, b.op("Concat", img, box, cls, axis=1))
    xyxy = b.op("GatherND", boxes, b.op("Concat", img, box, axis=1))
    rows = b.op("Concat", b.op("Cast", img, to=TensorProto.FLOAT), xyxy, b.op("Unsqueeze", score, _i64(b, [1])),
                b.op("Cast", cls, to=TensorProto.FLOAT), axis=1)
    order, img_sorted = _image_then_score(b, b.op("Squeeze", img, _i64(b, [1])), score)
    keep = _first_per_image(b, img_sorted, b.op("Gather", b.op("Shape", pred), _i64(b, 0), axis=0), topk)
    return b.op("Compress", b.op("Gather", rows, order, axis=0), keep, axis=0)


def _i64(b: Builder, value) -> str:
    return b.const(value, np.int64)


def _boxes_and_scores(b: Builder, pred: str, nc: int) -> tuple[str, str]:
    """(b, N, 4) corner boxes and (b, N, nc) scores = objectness x class score."""
    xy, wh = _cols(b, pred, 0, 2, 2), _cols(b, pred, 2, 4, 2)
    half = b.op("Mul", wh, b.const(0.5))
    boxes = b.op("Concat", b.op("Sub", xy, half), b.op("Add", xy, half), axis=2)
    return boxes, b.op("Mul", _cols(b, pred, 5, 5 + nc, 2), _cols(b, pred, 4, 5, 2))


def _image_then_score(b: Builder, img: str, score: str) -> tuple[str, str]:
    """Order of the selections by image, then score descending; and their sorted image indices."""
    key = b.op("Sub", b.op("Mul", b.op("Cast", img, to=TensorProto.DOUBLE), b.const(2.0, np.float64)),
               b.op("Cast", score, to=TensorProto.DOUBLE))  # scores are in [0, 1]
    _, order = b.op("TopK", key, b.op("Shape", key), n_out=2, largest=0, sorted=1)
    return order, b.op("Gather", img, order, axis=0)


def _first_per_image(b: Builder, img_sorted: str, n_images: str, topk: int) -> str:
    """Mask of the first ``topk`` selections of each image (selections sorted by image)."""
    col = b.op("Unsqueeze", img_sorted, _i64(b, [1]))
    images = b.op("Unsqueeze", b.op("Range", _i64(b, 0), n_images, _i64(b, 1)), _i64(b, [0]))
    onehot = b.op("Cast", b.op("Equal", col, images), to=TensorProto.INT64)  # (K, b)
    rank = b.op("GatherElements", b.op("CumSum", onehot, _i64(b, 0)), col, axis=1)  # 1-based within its image
    return b.op("Squeeze", b.op("LessOrEqual", rank, _i64(b, topk)), _i64(b, [1]))


def finish(b: Builder, inputs: Sequence[onnx.ValueInfoProto], outputs: dict[str, tuple[str, int, Sequence]],
           opset: int, metadata: dict[str, object]) -> onnx.ModelProto:
    """The model: ``outputs`` maps each graph output name to (value, element type, shape);
    ``metadata`` values are stored as JSON in metadata_props."""
    infos = []
    for name, (value, elem, shape) in outputs.items():
        _rename(b.nodes, value, name)
        infos.append(tensor_info(name, elem, shape))
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(b.graph("dydet", infos, inputs), opset_imports=opsets, producer_name="dydet",
                              ir_version=helper.find_min_ir_version_for(opsets))
    b.attach_weights(model.graph)
    helper.set_model_props(model, {k: json.dumps(v) for k, v in metadata.items()})
    return model


def _rename(nodes: Sequence[onnx.NodeProto], old: str, new: str) -> None:
    """Rename value ``old`` to ``new`` in ``nodes`` and every subgraph below them."""
    for node in nodes:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                _rename(g.node, old, new)
                for out in g.output:
                    out.name = new if out.name == old else out.name
