"""Parameter counts and GFLOPs (2 x multiply-accumulates counted by thop) per route."""
from __future__ import annotations

import contextlib
import copy
import io
import logging

import torch
import torch.nn as nn

try:
    import thop
except ImportError:  # pragma: no cover - thop is in requirements.txt
    thop = None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _gflops(module: nn.Module, *inputs) -> float:
    """2 x MACs / 1e9 of one forward call, measured by thop on a throwaway copy."""
    if thop is None:
        raise RuntimeError("GFLOPs need the 'thop' package: pip install thop")
    module = copy.deepcopy(module)
    logging.getLogger("thop").setLevel(logging.ERROR)
    with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()):
        macs, _ = thop.profile(module, inputs=inputs, verbose=False)
    return 2.0 * macs / 1e9


def fused_copy(model: nn.Module) -> nn.Module:
    """An eval-mode, fused deep copy of ``model`` (the original is untouched)."""
    m = copy.deepcopy(model).eval()
    return m.fuse() if hasattr(m, "fuse") else m


def route_gflops(model: nn.Module, img_size: int = 640) -> dict[str, float]:
    """Fused GFLOPs at batch 1: {'all': g} for plain models, {'easy': g, 'hard': g} for dynamic ones."""
    m = fused_copy(model)
    p = next(m.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    if not getattr(m, "is_dynamic", False):
        return {"all": _gflops(m, x)}
    out = {}
    for route, threshold in (("easy", 1.0), ("hard", 0.0)):
        m.threshold = threshold
        out[route] = _gflops(m, x)
    return out


def router_gflops(model: nn.Module, img_size: int = 640) -> float:
    """GFLOPs of the router alone: a Dy router on backbone-1 features of an img_size input, a
    DualRes router on its own thumbnail of the image (the resize itself not counted)."""
    m = fused_copy(model)
    p = next(m.parameters())
    x = torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    if not hasattr(m, "backbone1"):
        return _gflops(m.router, x)
    with torch.inference_mode():
        feats, _ = m.backbone1(x)
    return _gflops(m.router, m.router_inputs(feats))


def model_summary(model: nn.Module, img_size: int = 640) -> dict:
    """Fused parameter count and GFLOPs per route (and the router's share for dynamic models)."""
    fused = fused_copy(model)
    summary = {"params": count_params(fused), "gflops": route_gflops(model, img_size)}
    if getattr(model, "is_dynamic", False):
        summary["router_gflops"] = router_gflops(model, img_size)
        summary["router_params"] = count_params(model.router)
    return summary
