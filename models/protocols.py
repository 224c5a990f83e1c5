"""What code that runs a detector may rely on, whatever the detector is: a plain or a routed
PyTorch model (:class:`models.base.DetectorBase`, :class:`models.dualres.DualResModel`) or an
exported one run by a runtime (``utils.runtime.backend.ExportBackend``).

These are structural types (``typing.Protocol``): a class satisfies one by having the attributes,
not by inheriting. Every detector has all the attributes of :class:`Detector` with a value
(``route_names`` is empty for a plain model), so callers read them directly instead of probing
with ``getattr`` / ``hasattr``.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Detector(Protocol):
    """Any detector: ``model(x)`` on float (b, 3, h, w) images in [0, 1]."""

    is_dynamic: bool  # routes each image (then also a RoutedDetector)
    route_names: tuple[str, ...]  # ('easy', 'hard'), ('low', 'high'), or () for a plain model
    end2end: bool  # NMS inside: per-image (k, 6) detections instead of raw predictions
    fused: bool  # ready for inference (BatchNorm folded)

    @property
    def names(self) -> list[str]: ...

    @property
    def stride(self) -> torch.Tensor: ...

    def eval(self) -> Any: ...


@runtime_checkable
class RoutedDetector(Detector, Protocol):
    """A dynamic detector: ``model(x, threshold)`` returns a ``DyOutput`` (pred, φ, hard)."""

    threshold: float  # the routing threshold used when a call gives none
    threshold_input: bool  # whether a call may choose the threshold (an export may have it built in)
