"""Binary Gumbel-Softmax relaxation and the DualRes objective (DualRes Sec. 3.1.2, Eq. 4-5).

Binary Gumbel-Softmax: with g1, g2 independent Gumbel(0, 1) samples, g1 - g2 is a standard
logistic variable L = log(u) - log(1 - u), u ~ U(0, 1) (sampled directly here: one uniform per
decision instead of two, same distribution). The relaxed decision is

    soft = sigmoid((logit + L) / τ),     hard = 1[logit + L > 0] = 1[soft > 0.5],

so P(hard = 1) = sigmoid(logit) exactly, for every τ; the soft sample approaches the hard one
as τ -> 0 (its mean is biased toward 0.5 for large τ). With ``hard=True`` the returned values
are the 0/1 decisions in the forward pass and carry the soft sample's gradient
(straight-through estimator).

DualRes objective for a batch of B images with per-image losses L_low, L_high of the frozen
detector and decisions g (1 = high resolution):

    mean_i [g_i L_high,i + (1 - g_i) L_low,i] + γ (p - θ)²,    p = mean_i g_i,

the paper's Eq. 5 with L_YOLO the loss of the route each image takes; θ is the target share of
high-resolution images and γ weights the balance term.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

EPS = 1e-6  # keeps u away from 0 and 1 (float32 logistic noise within about ±13.8)


def logistic_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard logistic samples shaped like ``like`` (g1 - g2 of two Gumbel(0, 1) samples)."""
    u = torch.rand(like.shape, generator=generator, device=like.device if generator is None else generator.device,
                   dtype=torch.float32)
    u = u.clamp(EPS, 1 - EPS).to(like.device)
    return (torch.log(u) - torch.log1p(-u)).to(like.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: exact 0/1 decisions (soft > 0.5); backward: the gradient passes to the soft sample."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 1.0, hard: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed binary decisions: 0/1 with straight-through gradients (``hard``) or the soft sample."""
    if tau <= 0:
        raise ValueError(f"Gumbel-Softmax temperature must be > 0, got {tau}")
    soft = torch.sigmoid((logits + logistic_noise(logits, generator)) / tau)
    if not hard:
        return soft
    return _StraightThrough.apply(soft)


def balance_loss(decisions: torch.Tensor, theta: float) -> torch.Tensor:
    """(p - θ)², p the share of the batch routed to high resolution."""
    if not 0 <= theta <= 1:
        raise ValueError(f"target high-resolution share θ must be in [0, 1], got {theta}")
    return (decisions.mean() - theta) ** 2


class DualResLoss(NamedTuple):
    """The objective and its parts (``loss`` carries the gradient; the rest are for logging)."""

    loss: torch.Tensor
    detection: torch.Tensor
    balance: torch.Tensor
    high_share: torch.Tensor


def dualres_objective(decisions: torch.Tensor, l_low: torch.Tensor, l_high: torch.Tensor, gamma: float,
                      theta: float) -> DualResLoss:
    """mean[g L_high + (1 - g) L_low] + γ (p - θ)² for decisions g (losses are detached)."""
    l_low, l_high = l_low.detach().to(decisions.dtype), l_high.detach().to(decisions.dtype)
    detection = (decisions * l_high + (1 - decisions) * l_low).mean()
    balance = balance_loss(decisions, theta)
    return DualResLoss(detection + gamma * balance, detection.detach(), balance.detach(),
                       decisions.detach().mean())
