"""models/route.py: the one route rule, and every other form of it pinned to it on the edge cases."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from models.route import route_groups, route_mask
from utils.export.onnx_graph import Builder
from utils.export.onnx_graph import route_mask as onnx_route_mask
from utils.routing.calibration import hard_fraction

PHI = torch.tensor([0.0, 0.25, 0.5, 0.5, 0.75, 1.0])
THRESHOLDS = [-0.5, 0.0, 1e-9, 0.25, 0.5, 0.75, 1.0 - 1e-7, 1.0, 1.5]


def test_the_rule() -> None:
    assert route_mask(PHI, 0.5).tolist() == [False, False, False, False, True, True]  # φ > t, not >=
    assert route_mask(PHI, 0.0).all() and route_mask(PHI, -1.0).all()  # t <= 0: all hard, φ = 0 too
    assert not route_mask(PHI, 1.0).any() and not route_mask(PHI, 2.0).any()  # t >= 1: none, φ = 1 too
    assert route_mask(PHI, 1e-9).tolist() == [False, True, True, True, True, True]
    assert route_mask(PHI, 0.5).dtype == torch.bool and route_mask(PHI, 0.0).shape == PHI.shape


def test_groups_split_the_batch_in_input_order() -> None:
    easy, hard = route_groups(route_mask(PHI, 0.4))
    assert easy.tolist() == [0, 1] and hard.tolist() == [2, 3, 4, 5]
    easy, hard = route_groups(route_mask(PHI, 1.0))
    assert easy.tolist() == list(range(6)) and hard.numel() == 0 and hard.dtype == torch.long


def _onnx_rule() -> ort.InferenceSession:
    b = Builder()
    hard = b.op("Identity", onnx_route_mask(b, "phi", "threshold"))
    graph = b.graph("rule", [helper.make_tensor_value_info(hard, TensorProto.BOOL, [None])],
                    [helper.make_tensor_value_info("phi", TensorProto.FLOAT, [None]),
                     helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("t", THRESHOLDS)
def test_the_onnx_graph_and_the_calibration_apply_the_same_rule(t: float) -> None:
    want = route_mask(PHI, t)
    got = _onnx_rule().run(None, {"phi": PHI.numpy(), "threshold": np.asarray(t, np.float32)})[0]
    assert got.tolist() == want.tolist(), t
    assert hard_fraction(PHI.numpy(), t) == pytest.approx(float(want.double().mean()))
