"""Router objectives: Eq. 12 values, gradient direction, batch independence, baselines."""
from __future__ import annotations

import pytest
import torch

from utils.routing.loss import (
    adaptive_offset_loss,
    ap_targets,
    estimate_offset,
    random_targets,
    router_objective,
    target_loss,
)


def test_loss_value_on_hand_made_numbers() -> None:
    phi = torch.tensor([0.25, 0.5])
    l1, l2, delta = torch.tensor([3.0, 2.0]), torch.tensor([1.0, 1.5]), 1.0
    # image 0: 0.75 * (3 - 0.5) + 0.25 * (1 + 0.5) = 2.25; image 1: 0.5 * 1.5 + 0.5 * 2 = 1.75
    assert adaptive_offset_loss(phi, l1, l2, delta).item() == pytest.approx(2.0)


@pytest.mark.parametrize("l1,l2,direction", [(3.0, 1.0, +1), (1.2, 1.0, -1)])
def test_gradient_pushes_phi_by_gain_over_median(l1: float, l2: float, direction: int) -> None:
    """Δ = 1: a gain L1 - L2 = 2 > Δ must raise φ (hard); a gain of 0.2 < Δ must lower it."""
    logit = torch.zeros(1, requires_grad=True)
    loss = adaptive_offset_loss(logit.sigmoid(), torch.tensor([l1]), torch.tensor([l2]), 1.0)
    loss.backward()
    step = -logit.grad.item()  # a gradient-descent step on the router's output
    assert step * direction > 0
    # Eq. 13: dL/dφ = -(L1 - L2 - Δ)
    phi = torch.tensor([0.3], requires_grad=True)
    adaptive_offset_loss(phi, torch.tensor([l1]), torch.tensor([l2]), 1.0).backward()
    assert phi.grad.item() == pytest.approx(-(l1 - l2 - 1.0))


def test_detector_losses_get_no_gradient() -> None:
    l1, l2 = torch.tensor([2.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    phi = torch.tensor([0.5], requires_grad=True)
    adaptive_offset_loss(phi, l1 * 1, l2 * 1, 0.5).backward()
    assert l1.grad is None and l2.grad is None and phi.grad is not None


def test_batch_mean_equals_mean_of_single_images() -> None:
    g = torch.Generator().manual_seed(0)
    phi, l1, l2 = torch.rand(8, generator=g), torch.rand(8, generator=g) * 5, torch.rand(8, generator=g) * 4
    delta = estimate_offset(l1, l2)
    batch = adaptive_offset_loss(phi, l1, l2, delta)
    singles = torch.stack([adaptive_offset_loss(phi[i:i + 1], l1[i:i + 1], l2[i:i + 1], delta) for i in range(8)])
    assert batch.item() == pytest.approx(singles.mean().item(), rel=1e-6)


def test_offset_is_the_median_difference() -> None:
    l1, l2 = torch.tensor([5.0, 3.0, 4.0, 2.0]), torch.tensor([1.0, 2.0, 1.0, 1.5])
    assert estimate_offset(l1, l2) == pytest.approx((1.0 + 3.0) / 2)  # diffs 4, 1, 3, 0.5
    assert estimate_offset(torch.tensor([3.0]), torch.tensor([1.0])) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        estimate_offset(torch.tensor([]), torch.tensor([]))


def test_median_offset_balances_the_gradient_directions() -> None:
    g = torch.Generator().manual_seed(1)
    l1, l2 = torch.rand(101, generator=g) * 3 + 1, torch.rand(101, generator=g)
    phi = torch.full((101,), 0.5, requires_grad=True)
    adaptive_offset_loss(phi, l1, l2, estimate_offset(l1, l2)).backward()
    eps = 1e-6  # the median image itself has gradient 0 up to float rounding
    assert int((phi.grad < -eps).sum()) == 50 and int((phi.grad > eps).sum()) == 50


def test_ap_targets_split_at_the_offset() -> None:
    t = ap_targets(torch.tensor([3.0, 1.2, 2.0]), torch.tensor([1.0, 1.0, 1.0]), 1.0)
    assert t.tolist() == [1.0, 0.0, 0.0]
    phi = torch.tensor([0.9, 0.1, 0.2], requires_grad=True)
    router_objective("ap", phi, torch.tensor([3.0, 1.2, 2.0]), torch.ones(3), 1.0).backward()
    assert phi.grad[0] < 0 and phi.grad[1] > 0  # pushed toward its label


def test_random_targets_are_fixed_per_key_and_balanced() -> None:
    keys = [f"img{i}.jpg" for i in range(400)]
    t = random_targets(keys, seed=3)
    assert torch.equal(t, random_targets(keys, seed=3))
    assert not torch.equal(t, random_targets(keys, seed=4))
    assert 0.4 < t.mean().item() < 0.6
    assert torch.equal(random_targets(keys[5:7], seed=3), t[5:7])  # independent of the batch


def test_router_objective_dispatch_and_errors() -> None:
    phi, l1, l2 = torch.tensor([0.3, 0.6]), torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])
    assert router_objective("adaptive", phi, l1, l2, 1.0) == adaptive_offset_loss(phi, l1, l2, 1.0)
    assert router_objective("random", phi, l1, l2, 1.0, keys=["a", "b"]) == \
        target_loss(phi, random_targets(["a", "b"]))
    with pytest.raises(ValueError, match="one key per image"):
        router_objective("random", phi, l1, l2, 1.0)
    with pytest.raises(ValueError, match="unknown router strategy"):
        router_objective("oracle", phi, l1, l2, 1.0)


def test_routed_loss_sends_the_highest_phi_hard_and_breaks_ties_in_input_order() -> None:
    from utils.routing.loss import routed_loss
    phi = torch.tensor([0.2, 0.9, 0.5, 0.5, 0.1])
    l_easy = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    l_hard = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0])
    assert routed_loss(phi, l_easy, l_hard, 0) == pytest.approx(3.0)  # all easy
    assert routed_loss(phi, l_easy, l_hard, 100) == 0.0
    assert routed_loss(phi, l_easy, l_hard, 20) == pytest.approx((1 + 3 + 4 + 5) / 5)  # image 1 hard
    # 40%: image 1, then of the tied images 2 and 3 the earlier one
    assert routed_loss(phi, l_easy, l_hard, 40) == pytest.approx((1 + 4 + 5) / 5)
    for percent in range(0, 101, 10):  # brute force: the same as sorting by (-φ, index)
        order = sorted(range(5), key=lambda i: (-float(phi[i]), i))[:round(5 * percent / 100)]
        want = sum(float(l_hard[i] if i in order else l_easy[i]) for i in range(5)) / 5
        assert routed_loss(phi, l_easy, l_hard, percent) == pytest.approx(want), percent


def test_gain_scale_is_the_median_gap_over_the_offset() -> None:
    from utils.routing.loss import gain_scale
    l1, l2 = torch.tensor([0.5, 0.4, 0.3, 0.9]), torch.tensor([0.2, 0.3, 0.3, 0.1])  # L1 - L2: .3 .1 0 .8
    assert gain_scale(l1, l2, 0.2) == pytest.approx(0.15)  # |.1|, |-.1|, |-.2|, |.6| -> median .15
    assert gain_scale(l1, l1, 0.0) == 1.0  # no gap at all: left as it is


def _fit_free_logits(decay: float, steps: int = 3000) -> torch.Tensor:
    """Adam on one free logit per image under Eq. 12 (scaled) plus the logit decay."""
    from utils.routing.loss import gain_scale, logit_decay
    gains = torch.linspace(-0.05, 0.05, 11)
    l1, l2 = 0.3 + gains, torch.full((11,), 0.3)
    delta = estimate_offset(l1, l2)
    scale = gain_scale(l1, l2, delta)
    z = torch.zeros(11, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(steps):
        loss = router_objective("adaptive", z.sigmoid(), l1, l2, delta, gain_scale=scale) + logit_decay(z, decay)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z.detach()


def test_logit_decay_keeps_phi_off_0_and_1_and_in_gain_order() -> None:
    # Eq. 12 alone: Adam moves every clear case alike, so images that gain little and much end on
    # the same logit (the ranking among them is lost), and the logits keep growing toward φ = 0 / 1
    free, longer = _fit_free_logits(0.0, 1500), _fit_free_logits(0.0, 3000)
    assert float(free[6:].max() - free[6:].min()) < 1e-3 and float(longer.max()) > float(free.max()) + 1
    kept, kept_longer = _fit_free_logits(0.01, 1500), _fit_free_logits(0.01, 3000)
    torch.testing.assert_close(kept, kept_longer, atol=1e-3, rtol=0)  # settled
    assert kept.abs().max() < 8 and float(kept[6:].max() - kept[6:].min()) > 0.5
    assert torch.equal(torch.argsort(kept), torch.arange(11))  # ordered by the gain, no ties
