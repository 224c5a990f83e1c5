"""Router training objectives of DynamicDet stage 2 (paper Sec. 3.3, Eq. 12) and two baselines.

Convention: φ is the difficulty; an image goes to detector 2 when φ > threshold. With per-image
detection losses L1, L2 of the frozen detectors and the adaptive offset Δ (the median of
L1 - L2 over the training images), Eq. 12 reads per image

    (1 - φ)(L1 - Δ/2) + φ(L2 + Δ/2),   so   ∂/∂φ = -(L1 - L2 - Δ)   (Eq. 13).

Gradient descent therefore raises φ (toward hard) exactly when detector 2 helps more than the
median image (L1 - L2 > Δ) and lowers it otherwise; the paper's orientation needs no flip.

Baselines for the strategy comparison (paper Fig. 7), trained with BCE on φ:

* ``random``: a fixed pseudo-random label per image (from its file name and a seed, the same
  every epoch). The router ends up ranking images independently of their difficulty, yet stays
  a deterministic router that can be calibrated and deployed like the real one, which is what
  "random selection" at a given hard fraction means.
* ``ap`` (Adaptive-Feeding-like): label 1 when detector 2 beats detector 1 by more than the
  median margin, 1[L1 - L2 > Δ]. Per-image losses stand in for per-image AP (AP would need NMS
  and matching of both detectors on every image each step); a plain "L2 < L1" label would be
  1 for almost every image, so the median margin keeps the two classes balanced, as Eq. 12
  does. It differs from ``adaptive`` in using only the sign, not the size, of the gain.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

STRATEGIES = ("adaptive", "random", "ap")


def adaptive_offset_loss(phi: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 12 averaged over the batch; L1, L2 are detached (no gradient into the detectors)."""
    l1, l2 = l1.detach().to(phi.dtype), l2.detach().to(phi.dtype)
    per_image = (1 - phi) * (l1 - delta / 2) + phi * (l2 + delta / 2)
    return per_image.mean()


def estimate_offset(l1: torch.Tensor, l2: torch.Tensor) -> float:
    """Adaptive offset Δ: the median of L1 - L2 over images (midpoint of the two middle ones)."""
    diff = (l1.detach() - l2.detach()).double().flatten().cpu().numpy()
    if diff.size == 0:
        raise ValueError("need at least one image to estimate the adaptive offset")
    return float(np.median(diff))


def ap_targets(l1: torch.Tensor, l2: torch.Tensor, delta: float) -> torch.Tensor:
    """1 where detector 2 gains more than the median margin over detector 1, else 0."""
    return ((l1.detach() - l2.detach()) > delta).float()


def random_targets(keys: Sequence[str], seed: int = 0) -> torch.Tensor:
    """A fixed 0/1 label per image key (e.g. its path), independent of the image content."""
    return torch.tensor([zlib.crc32(f"{seed}:{k}".encode()) & 1 for k in keys], dtype=torch.float32)


def target_loss(phi: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of φ against 0/1 labels, averaged over the batch."""
    return F.binary_cross_entropy(phi, target.to(phi), reduction="mean")


def router_objective(strategy: str, phi: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor,
                     delta: float, keys: Sequence[str] = (), seed: int = 0, gain_scale: float = 1.0) -> torch.Tensor:
    """The batch loss of ``strategy`` ('adaptive', 'random' or 'ap') for the router output φ
    (Eq. 12 divided by ``gain_scale``; the BCE baselines are scale-free already)."""
    if strategy == "adaptive":
        return adaptive_offset_loss(phi, l1, l2, delta) / gain_scale
    if strategy == "ap":
        return target_loss(phi, ap_targets(l1, l2, delta))
    if strategy == "random":
        if len(keys) != phi.numel():
            raise ValueError(f"strategy 'random' needs one key per image ({phi.numel()}), got {len(keys)}")
        return target_loss(phi, random_targets(keys, seed))
    raise ValueError(f"unknown router strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def gain_scale(l1: torch.Tensor, l2: torch.Tensor, delta: float) -> float:
    """The typical size of an image's gain over the offset: median |L1 - L2 - Δ| (1.0 when all are 0).

    Eq. 12 divided by it has per-image gradients of order one on any data set, which makes a
    logit decay of a fixed weight mean the same everywhere."""
    gap = (l1.detach() - l2.detach() - delta).abs().double().flatten().cpu().numpy()
    scale = float(np.median(gap)) if gap.size else 0.0
    return scale if scale > 0 else 1.0


def logit_decay(logits: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight`` x mean squared logit. Eq. 12 is linear in φ, so without it (and with Adam, which
    rescales the vanishing gradients of a saturated sigmoid) logits grow until φ is exactly 0 or
    1 for most images and the dial can no longer split them; with it each image's logit settles
    where the decay balances its gain, which keeps the images ordered by how much they gain."""
    if weight <= 0:
        return logits.new_zeros(())
    return weight * logits.pow(2).mean()


def routed_loss(phi: torch.Tensor, l_easy: torch.Tensor, l_hard: torch.Tensor, percent: float) -> float:
    """Mean detection loss when the ``percent``% highest-φ images take the hard route (detector 2,
    or the high resolution) and the rest the easy one: what a router's ranking is worth at that
    share. Ties in φ go in input order (a stable sort), so the value does not depend on the
    sorting algorithm."""
    n_hard = int(round(len(phi) * percent / 100))
    hard = torch.zeros(len(phi), dtype=torch.bool)
    hard[torch.argsort(phi, descending=True, stable=True)[:n_hard]] = True
    return float(torch.where(hard, l_hard, l_easy).mean())
