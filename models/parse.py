"""Model configs (YAML) -> layer specs -> modules, through the layer registry.

A config lists ``backbone`` and ``head`` rows ``[from, number, module, args]`` in YOLOv7's form.
``from`` is -1 (previous layer), a negative offset, an absolute layer index, or a list of
those. Rows are numbered backbone first, then head. A dynamic config names a plain config as its
``base`` and adds a ``dynamic`` section (composite link and router); see cfg/dy-yolov7.yaml.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch.nn as nn
import yaml

from models import head, layers  # noqa: F401  (registers layer types)
from models.registry import get_layer

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
IMAGE = -1  # absolute index that denotes the input image


@dataclass
class LayerSpec:
    """One config row with inputs made absolute (IMAGE for the input image)."""

    index: int
    inputs: list[int]
    type: str
    args: list
    multi_input: bool


def find_cfg(name: str | Path) -> Path:
    """Resolve 'dy-yolov7', 'dy-yolov7.yaml' or a path to an existing config file."""
    path = Path(name)
    candidates = [path, CFG_DIR / path.name, CFG_DIR / f"{path.name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(p.stem for p in CFG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"model config {str(name)!r} not found; built-in configs: {known}")


def load_cfg(cfg: str | Path | dict) -> dict:
    """A self-contained config dict: files are read and a dynamic config's ``base`` merged in."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    path = find_cfg(cfg)
    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ValueError(f"model config {path} is not a YAML mapping")
    d.setdefault("name", path.stem)
    if "base" in d:
        base = load_cfg(path.parent / d.pop("base"))
        base.pop("name", None)
        d = {**base, **d}
    return d


def _absolute(ref: int, index: int) -> int:
    return index + ref if ref < 0 else ref


def read_specs(cfg: dict) -> list[LayerSpec]:
    """Backbone and head rows as LayerSpecs with absolute input indices."""
    rows = list(cfg.get("backbone", [])) + list(cfg.get("head", []))
    if not rows:
        raise ValueError("model config has no 'backbone'/'head' layers")
    specs = []
    for i, row in enumerate(rows):
        if len(row) != 4:
            raise ValueError(f"layer {i}: expected [from, number, module, args], got {row}")
        frm, number, module, args = row
        if number != 1:
            raise ValueError(f"layer {i}: repeated layers (number={number}) are not supported")
        multi = isinstance(frm, list)
        inputs = [_absolute(r, i) for r in (frm if multi else [frm])]
        if any(j >= i or j < IMAGE for j in inputs):
            raise ValueError(f"layer {i}: input {frm} does not refer to an earlier layer")
        specs.append(LayerSpec(i, inputs, str(module), list(args or []), multi))
    return specs


def _substitute(args: Iterable[Any], cfg: dict) -> list:
    """Replace the names 'nc' and 'anchors' in layer args by their config values."""
    named = {"nc": cfg["nc"], "anchors": cfg["anchors"]}
    return [named[a] if isinstance(a, str) and a in named else a for a in args]


def build_layers(specs: list[LayerSpec], cfg: dict, image_channels: int = 3
                 ) -> tuple[list[nn.Module], dict[int, int], dict[int, float]]:
    """Instantiate every spec; return modules and per-index output channels and strides."""
    channels, strides = {IMAGE: image_channels}, {IMAGE: 1.0}
    act = cfg.get("activation", "silu")
    modules = []
    for s in specs:
        cls = get_layer(s.type)
        ch = [channels[j] for j in s.inputs]
        args = _substitute(s.args, cfg)
        if cls is head.IDetect:
            m = cls.from_config(ch, args, act, strides=[strides[j] for j in s.inputs])
        else:
            m = cls.from_config(ch, args, act)
        channels[s.index] = m.out_channels
        strides[s.index] = strides[s.inputs[-1]] * m.stride_factor
        modules.append(m)
    return modules, channels, strides
