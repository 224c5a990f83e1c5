"""Optimizer groups, one-cycle schedule and warm-up."""
from __future__ import annotations

import pytest

from models.yolo import build_model
from utils.train.optim import build_optimizer, one_cycle, warmup

HYP = {"lr0": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "warmup_bias_lr": 0.1, "warmup_momentum": 0.8}


@pytest.mark.parametrize("adam", [False, True])
def test_groups_cover_every_trainable_parameter_once(adam: bool) -> None:
    model = build_model("dy-yolov7-tiny", nc=2)
    model.router.requires_grad_(False)
    opt = build_optimizer(model, HYP, adam)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    no_decay, decay, biases = opt.param_groups
    assert decay["weight_decay"] == HYP["weight_decay"] and no_decay["weight_decay"] == 0
    assert all(p.ndim == 1 for p in biases["params"]) and all(p.ndim == 4 for p in decay["params"])


def test_one_cycle_and_warmup() -> None:
    f = one_cycle(0.1, 10)
    assert f(0) == pytest.approx(1.0) and f(10) == pytest.approx(0.1) and f(5) == pytest.approx(0.55)
    opt = build_optimizer(build_model("yolov7-tiny", nc=1), HYP, adam=False)
    for g in opt.param_groups:
        g["initial_lr"] = HYP["lr0"]
    warmup(opt, 0, 10, 0, f, HYP)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.1]
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    warmup(opt, 10, 10, 0, f, HYP)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01] * 3)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.937)
