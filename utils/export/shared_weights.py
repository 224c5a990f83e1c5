"""One copy of every weight that several graphs of a model hold alike.

Each traced stage brings its own copy of its weights, so the two branches of a DualRes ``If``
(one detector traced at two input sizes) hold the same tensors twice; onnxslim may also copy an
outer weight into each branch that reads it. :func:`share_duplicates` keeps one copy of each
tensor held more than once (same type, shape and values), in the main graph — an ONNX subgraph
sees its enclosing graphs' values, so every branch reads that one tensor — and points the
readers at it.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator

import onnx
from onnx import numpy_helper

PREFIX = "shared"


def content_key(t: onnx.TensorProto) -> tuple:
    """(element type, shape, digest of the values): equal keys mean equal tensors."""
    a = numpy_helper.to_array(t)
    return t.data_type, tuple(a.shape), hashlib.sha256(a.tobytes()).hexdigest()


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by ``graph``'s nodes (If branches, loop bodies), not descending further."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` first, then every subgraph below it (depth first)."""
    yield graph
    for g in subgraphs(graph):
        yield from all_graphs(g)


def share_duplicates(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep one copy of each repeated initializer, in the main graph (in place; returns ``model``)."""
    graphs = list(all_graphs(model.graph))
    copies: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for i, g in enumerate(graphs):
        interface = {v.name for v in (*g.input, *g.output)}
        for t in g.initializer:
            if t.name not in interface:
                copies[content_key(t)].append((i, t.name))
    taken = {t.name for g in graphs for t in g.initializer} | {v for g in graphs for n in g.node for v in n.output}
    dropped: dict[int, set[str]] = defaultdict(set)
    for found in (c for c in copies.values() if len(c) > 1):
        keep = found[0][1] if found[0][0] == 0 else _hoist(graphs, found[0], taken)
        for i, name in found:
            if (i, name) != (0, keep):
                dropped[i].add(name)
                _rename(graphs[i], name, keep)
    for i, names in dropped.items():
        kept = [t for t in graphs[i].initializer if t.name not in names]
        del graphs[i].initializer[:]
        graphs[i].initializer.extend(kept)
    return model


def _hoist(graphs: list[onnx.GraphProto], where: tuple[int, str], taken: set[str]) -> str:
    """Copy initializer ``where`` = (graph index, name) into the main graph under a new name."""
    i, name = where
    source = next(t for t in graphs[i].initializer if t.name == name)
    new = f"{PREFIX}/{name.rsplit('/', 1)[-1]}"
    n = 0
    while new in taken:
        n += 1
        new = f"{PREFIX}/{name.rsplit('/', 1)[-1]}_{n}"
    taken.add(new)
    t = graphs[0].initializer.add()
    t.CopyFrom(source)
    t.name = new
    return new


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every reader of ``old`` in ``graph`` and its subgraphs at ``new``."""
    for g in all_graphs(graph):
        for node in g.node:
            node.input[:] = [new if v == old else v for v in node.input]
        for info in g.value_info:
            if info.name == old:
                info.name = new
