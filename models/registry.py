"""Registry of layer types that model configs may name (no `eval` of config strings)."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.nn as nn

T = TypeVar("T", bound=type)

LAYERS: dict[str, type[nn.Module]] = {}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": lambda: nn.SiLU(inplace=True),
    "leaky": lambda: nn.LeakyReLU(0.1, inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    "identity": nn.Identity,
}


def register(*names: str) -> Callable[[T], T]:
    """Class decorator: make a layer available to configs under its class name and aliases."""
    def wrap(cls: T) -> T:
        for name in (cls.__name__, *names):
            if name in LAYERS and LAYERS[name] is not cls:
                raise ValueError(f"layer name {name!r} registered twice")
            LAYERS[name] = cls
        return cls
    return wrap


def get_layer(name: str) -> type[nn.Module]:
    """Look up a layer type by config name, with a helpful error for unknown names."""
    try:
        return LAYERS[name]
    except KeyError:
        raise KeyError(f"unknown layer type {name!r} in model config; known: {sorted(LAYERS)}") from None


def make_activation(name: str | bool | None) -> nn.Module:
    """Activation module from a config name ('silu', 'leaky', 'relu', 'identity')."""
    if name is True or name is None:
        name = "silu"
    if name is False:
        name = "identity"
    try:
        return ACTIVATIONS[str(name).lower()]()
    except KeyError:
        raise KeyError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None
