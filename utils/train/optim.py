"""Optimizer parameter groups, the one-cycle LR schedule and warm-up (YOLOv7's recipe)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, hyp: dict, adam: bool) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW with three groups: no-decay norms/implicits, decayed weights, biases."""
    no_decay, decay, biases = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                biases.append(p)
            elif isinstance(module, nn.modules.batchnorm._NormBase) or name == "implicit":
                no_decay.append(p)
            else:
                decay.append(p)
    if adam:
        opt = torch.optim.AdamW(no_decay, lr=hyp["lr0"], betas=(hyp["momentum"], 0.999), weight_decay=0.0)
    else:
        opt = torch.optim.SGD(no_decay, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)
    opt.add_param_group({"params": decay, "weight_decay": hyp["weight_decay"]})
    opt.add_param_group({"params": biases})
    return opt


def one_cycle(lrf: float, epochs: int) -> Callable[[int], float]:
    """LR factor: cosine from 1 at epoch 0 down to ``lrf`` at the last epoch."""
    def factor(epoch: int) -> float:
        return ((1 - math.cos(epoch * math.pi / max(epochs, 1))) / 2) * (lrf - 1) + 1
    return factor


def warmup(optimizer: torch.optim.Optimizer, step: int, n_warmup: int, epoch: int,
           lr_factor: Callable[[int], float], hyp: dict) -> None:
    """Linear warm-up of LR (biases start high at ``warmup_bias_lr``) and momentum."""
    xp = [0, n_warmup]
    for j, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 2 else 0.0
        group["lr"] = float(np.interp(step, xp, [start, group["initial_lr"] * lr_factor(epoch)]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(step, xp, [hyp["warmup_momentum"], hyp["momentum"]]))
        elif "betas" in group:
            beta1 = float(np.interp(step, xp, [hyp["warmup_momentum"], hyp["momentum"]]))
            group["betas"] = (beta1, group["betas"][1])
