"""CPU inference fast path: pre-packed oneDNN convolutions with the activation folded in.

Eager PyTorch runs a CPU convolution by converting its weights (and, for NCHW tensors, its
input and output) to oneDNN's blocked layouts on every call, then runs the activation as a
separate pass over memory. :func:`prepare` attaches a :class:`PackedConv` to each fused
convolution: the weights are converted once, activations stay channels-last between layers,
and SiLU / LeakyReLU / ReLU run inside the convolution kernel.

The packed weights are a cache, never state: ``state_dict`` keys are unchanged, a deep copy or a
pickle drops the cache (it is rebuilt on the next call), and a change of the weights (e.g.
``load_state_dict``) is noticed through the tensor version counter. The plain path runs instead
whenever the cache cannot apply: training mode, gradients, CUDA, non-float32 inputs, forward
hooks on the convolution (so thop and other hook-based tools see every layer), tracing (ONNX
and TorchScript exports get standard convolutions) and torch.compile.
"""
from __future__ import annotations

import ctypes
import logging
import sys
from collections import OrderedDict

import torch
import torch.nn as nn

LOGGER = logging.getLogger("dydet.fastpath")
_ONEDNN_ACTIVATIONS: dict[type, str] = {nn.SiLU: "swish", nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu"}


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def available() -> bool:
    """True when this PyTorch build has oneDNN's fused convolution operators."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _activation_attr(act: nn.Module | None) -> tuple[str, list[float]] | None:
    """oneDNN post-op name and scalars for ``act``; None when oneDNN cannot fold it."""
    if act is None or isinstance(act, nn.Identity):
        return "none", []
    name = _ONEDNN_ACTIVATIONS.get(type(act))
    if name is None:
        return None
    return name, [float(act.negative_slope)] if isinstance(act, nn.LeakyReLU) else []


class PackedConv:
    """oneDNN-layout weights of one ``nn.Conv2d`` and its folded activation.

    oneDNN picks the weight layout for the input shape, so packed weights are kept per input
    shape (channels, height, width), for the ``MAX_SHAPES`` most recent shapes (each entry costs
    one copy of the weights). The batch size is not part of the key: the layout chosen for one
    image serves any batch at the same speed (measured), and a benchmark or a mixed routed batch
    that alternates batch sizes would otherwise re-pack every layer on every call. A shape seen
    for the first time costs one conversion, as every call on the plain path does.
    """

    MAX_SHAPES = 2

    def __init__(self, act: nn.Module | None) -> None:
        attr = _activation_attr(act)
        self.fold_act = attr is not None
        self.attr, self.scalars = attr if attr is not None else ("none", [])
        self.weights: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.key: tuple = ()

    def __deepcopy__(self, memo: dict) -> "PackedConv":
        other = PackedConv(None)
        other.fold_act, other.attr, other.scalars = self.fold_act, self.attr, list(self.scalars)
        return other

    def __getstate__(self) -> dict:
        return {**self.__dict__, "weights": OrderedDict(), "key": ()}

    @staticmethod
    def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
        """Whether the packed call may replace ``conv(x)``: CPU float32 inference, no hooks, no tracing."""
        return (not conv.training and x.device.type == "cpu" and x.dtype == torch.float32
                and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu"
                and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
                and not conv._forward_hooks and not conv._forward_pre_hooks
                and not torch.jit.is_tracing() and not _compiling())

    def _packed_weight(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        w = conv.weight
        key = (w.data_ptr(), None if w.is_inference() else w._version)  # inference tensors have no version
        if key != self.key:  # new or changed weights
            self.weights.clear()
            self.key = key
        shape = tuple(x.shape[1:])
        packed = self.weights.get(shape)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w.detach(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, [1, *shape])
            while len(self.weights) >= self.MAX_SHAPES:
                self.weights.popitem(last=False)
            self.weights[shape] = packed
        else:
            self.weights.move_to_end(shape)
        return packed

    def __call__(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """``act(conv(x))`` (or ``conv(x)`` when the activation is not folded), channels-last out."""
        x = x.contiguous(memory_format=torch.channels_last)
        bias = conv.bias.detach() if conv.bias is not None else None
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed_weight(conv, x), bias, list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups, self.attr, self.scalars, "")


def conv_act(conv: nn.Conv2d, act: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``act(conv(x))``: one packed oneDNN call when :func:`prepare` set ``conv`` up and it applies."""
    packed: PackedConv | None = conv.__dict__.get("packed")
    if packed is not None and packed.applies(conv, x):
        y = packed(conv, x)
        return y if packed.fold_act or act is None else act(y)
    y = conv(x)
    return y if act is None else act(y)


def prepare(conv: nn.Conv2d, act: nn.Module | None = None) -> None:
    """Attach a :class:`PackedConv` to a fused ``conv`` (``act``: the activation after it).

    Takes effect where the layer calls :func:`conv_act`; :meth:`DetectorBase.optimize_for_inference`
    prepares every detector convolution.
    """
    if isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
        conv.__dict__["packed"] = PackedConv(act)


def keep_freed_memory(enable: bool = True) -> bool:
    """Let glibc reuse freed activation memory instead of unmapping it (Linux/glibc only).

    By default glibc serves every block over 32 MB by a fresh mapping and hands free memory at
    the top of the heap back to the kernel, so each layer's output is faulted in page by page
    again: tens of thousands of page faults per 640 px image. ``enable=False`` restores glibc's
    default limits. Process-wide; returns whether glibc accepted the settings.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    mmap_max, trim = (0, 2 ** 30) if enable else (65536, 128 * 1024)
    ok = libc.mallopt(m_mmap_max, mmap_max) == 1 and libc.mallopt(m_trim_threshold, trim) == 1
    if not ok:
        LOGGER.debug("mallopt refused; freed memory is returned to the kernel as usual")
    return ok
