"""Binary Gumbel-Softmax (straight-through) and the DualRes balance term and objective."""
from __future__ import annotations

import pytest
import torch

from utils.routing.gumbel import balance_loss, dualres_objective, gumbel_sigmoid, logistic_noise

N = 200_000  # samples per logit: the standard error of a mean decision is below 0.0012


def repeated(logits: list[float]) -> torch.Tensor:
    return torch.tensor(logits).repeat(N, 1)


def test_noise_is_standard_logistic() -> None:
    noise = logistic_noise(torch.zeros(N), torch.Generator().manual_seed(0))
    assert abs(float(noise.mean())) < 0.02
    assert float(noise.var()) == pytest.approx(torch.pi ** 2 / 3, rel=0.03)  # logistic variance π²/3


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_hard_decisions_are_bernoulli_of_sigmoid_logit(tau: float) -> None:
    logits = [-2.0, -0.5, 0.0, 0.7, 3.0]
    g = gumbel_sigmoid(repeated(logits), tau, hard=True, generator=torch.Generator().manual_seed(1))
    assert set(g.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(g.mean(0), torch.sigmoid(torch.tensor(logits)), atol=5e-3, rtol=0)


def test_soft_samples_match_sigmoid_logit_at_low_temperature_and_shrink_toward_half_at_high() -> None:
    logits = torch.tensor([-2.0, -0.5, 0.7, 3.0])
    gen = torch.Generator().manual_seed(2)
    cold = gumbel_sigmoid(logits.repeat(N, 1), 0.05, hard=False, generator=gen).mean(0)
    torch.testing.assert_close(cold, torch.sigmoid(logits), atol=6e-3, rtol=0)
    hot = gumbel_sigmoid(logits.repeat(N, 1), 5.0, hard=False, generator=gen).mean(0)
    assert bool(((hot - 0.5).abs() < (torch.sigmoid(logits) - 0.5).abs()).all())  # the bias of a high τ


def test_straight_through_gradient_is_the_soft_samples() -> None:
    logits = torch.tensor([-1.0, 0.2, 1.5], requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 3.0])
    hard = gumbel_sigmoid(logits, 0.5, hard=True, generator=torch.Generator().manual_seed(3))
    (hard * weights).sum().backward()
    grad_hard = logits.grad.clone()
    logits.grad = None
    soft = gumbel_sigmoid(logits, 0.5, hard=False, generator=torch.Generator().manual_seed(3))
    (soft * weights).sum().backward()
    torch.testing.assert_close(grad_hard, logits.grad)
    assert bool((grad_hard != 0).all())
    torch.testing.assert_close(hard.detach(), (soft.detach() > 0.5).float())


def test_same_generator_state_same_samples_and_bad_tau() -> None:
    logits = torch.randn(64)
    a = gumbel_sigmoid(logits, 1.0, generator=torch.Generator().manual_seed(4))
    b = gumbel_sigmoid(logits, 1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        gumbel_sigmoid(logits, 0.0)


def test_balance_term_is_zero_at_theta_and_pushes_an_excess_down() -> None:
    assert float(balance_loss(torch.tensor([1.0, 0.0, 1.0, 0.0]), 0.5)) == 0.0
    logits = torch.tensor([2.0, 1.0, 0.5, -0.1], requires_grad=True)
    balance_loss(torch.sigmoid(logits), 0.25).backward()  # p ≈ 0.67 > θ
    assert bool((logits.grad > 0).all())  # gradient descent lowers every logit: fewer images high
    logits.grad = None
    balance_loss(torch.sigmoid(logits), 0.9).backward()
    assert bool((logits.grad < 0).all())
    with pytest.raises(ValueError, match="θ"):
        balance_loss(torch.ones(2), 1.5)


def test_objective_value_and_gradient() -> None:
    g = torch.tensor([1.0, 0.0, 1.0, 1.0], requires_grad=True)
    l_low, l_high = torch.tensor([1.0, 2.0, 3.0, 0.5]), torch.tensor([0.5, 1.0, 1.0, 0.7])
    gamma, theta = 2.0, 0.25
    res = dualres_objective(g, l_low, l_high, gamma, theta)
    detection = (0.5 + 2.0 + 1.0 + 0.7) / 4
    assert float(res.detection) == pytest.approx(detection)
    assert float(res.balance) == pytest.approx((0.75 - theta) ** 2)
    assert float(res.loss.detach()) == pytest.approx(detection + gamma * (0.75 - theta) ** 2)
    assert float(res.high_share) == pytest.approx(0.75)
    res.loss.backward()
    want = (l_high - l_low) / 4 + 2 * gamma * (0.75 - theta) / 4
    torch.testing.assert_close(g.grad, want)
