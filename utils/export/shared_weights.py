"""One copy of the weights that several traced stages hold alike (e.g. one detector at two sizes).

Each trace gets its own copy of every initializer. :func:`share_initializers` finds the tensors
that every stage holds with the same type, shape and values, takes them out of the stages, and
returns one copy of each under a common name; the stages' nodes then read that name. Placed in
the outer graph, the copy is visible in every ``If`` branch (ONNX outer-scope values), so the
file holds it once and each branch reads the same tensor.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import onnx
from onnx import numpy_helper

from utils.export.onnx_graph import Stage


def content_key(t: onnx.TensorProto) -> tuple:
    """(element type, shape, digest of the values): equal keys mean equal tensors."""
    a = numpy_helper.to_array(t)
    return t.data_type, tuple(a.shape), hashlib.sha256(a.tobytes()).hexdigest()


def share_initializers(stages: Sequence[Stage], key: str) -> list[onnx.TensorProto]:
    """Move the initializers every stage holds alike out of ``stages``; returns one of each, named
    ``key/<name>``, which the stages' nodes now read (listed in each :attr:`Stage.outer`)."""
    if not stages:
        return []
    keyed = [[(content_key(t), t) for t in s.graph.initializer] for s in stages]
    common = set.intersection(*({k for k, _ in pairs} for pairs in keyed))
    shared: dict[tuple, onnx.TensorProto] = {}
    for k, t in keyed[0]:
        if k in common and k not in shared:
            shared[k] = onnx.TensorProto()
            shared[k].CopyFrom(t)
            shared[k].name = f"{key}/{t.name}"
    for stage, pairs in zip(stages, keyed):
        _read_outer(stage, {t.name: shared[k].name for k, t in pairs if k in shared})
    return list(shared.values())


def _read_outer(stage: Stage, rename: dict[str, str]) -> None:
    """Drop ``rename``'s initializers from ``stage`` and point its nodes at the outer names."""
    outputs = set(stage.outputs)
    rename = {old: new for old, new in rename.items() if old not in outputs}
    kept = [t for t in stage.graph.initializer if t.name not in rename]
    del stage.graph.initializer[:]
    stage.graph.initializer.extend(kept)
    for node in stage.graph.node:
        node.input[:] = [rename.get(v, v) for v in node.input]
    stage.outer.update(rename.values())
