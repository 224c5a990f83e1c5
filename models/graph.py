"""Running a list of layers whose inputs are positions in a shared feature list.

Position 0 of the feature list is the input image; every layer appends its output. Each layer
carries ``f`` (an int, or a list of ints when it takes several inputs). ``release`` tells which
positions may be dropped after each layer so inference does not hold every activation.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch.nn as nn


def wire(module: nn.Module, positions: Sequence[int], multi_input: bool) -> nn.Module:
    """Attach input positions to a layer."""
    module.f = list(positions) if multi_input else int(positions[0])
    return module


def inputs_of(module: nn.Module) -> list[int]:
    return module.f if isinstance(module.f, list) else [module.f]


def release_schedule(layers: Sequence[nn.Module], first_position: int, keep: Iterable[int] = ()
                     ) -> list[list[int]]:
    """For each layer, the positions whose last reader it is (excluding ``keep``)."""
    keep = set(keep)
    last_use: dict[int, int] = {}
    for t, m in enumerate(layers):
        for p in inputs_of(m):
            last_use[p] = t
    schedule: list[list[int]] = [[] for _ in layers]
    for p, t in last_use.items():
        if p not in keep:
            schedule[t].append(p)
    # a layer's own output is dropped at once when nobody reads it (except the last layer)
    for t in range(len(layers) - 1):
        p = first_position + t
        if p not in last_use and p not in keep:
            schedule[t].append(p)
    return schedule


def run_layers(layers: Sequence[nn.Module], feats: list, release: list[list[int]] | None = None):
    """Run ``layers`` appending outputs to ``feats``; returns the last output."""
    x = None
    for t, m in enumerate(layers):
        f = m.f
        x = m(feats[f] if isinstance(f, int) else [feats[j] for j in f])
        feats.append(x)
        if release is not None:
            for p in release[t]:
                feats[p] = None
    return x
