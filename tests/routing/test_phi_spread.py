"""The saturation check on a router's φ: spread scores pass, collapsed ones warn in one line."""
from __future__ import annotations

import numpy as np
import pytest

from utils.routing.phi_spread import spread_warning, saturated_share


def test_spread_scores_do_not_warn() -> None:
    phi = np.random.default_rng(0).uniform(0.05, 0.95, 5000)  # many fp16 ties, none at the edges
    assert saturated_share(phi) == 0.0
    assert spread_warning(phi) is None
    assert spread_warning(np.concatenate([phi, np.full(500, 1.0)])) is None  # 9% at 1: a confident router


@pytest.mark.parametrize("end", [0.0, 1.0])
def test_scores_collapsed_at_one_end_warn(end: float) -> None:
    rng = np.random.default_rng(1)
    # distinct in float64, but within fp16 rounding of each other near the end
    phi = np.abs(end - rng.uniform(0, 1e-8 if end == 0 else 2e-4, 100))
    assert saturated_share(phi) > 0.9
    line = spread_warning(phi, "training images")
    assert line is not None and "\n" not in line
    assert "100 training images" in line and ("100% below 0.001" if end == 0 else "100% above 0.999") in line


def test_partly_saturated_scores_cross_the_limit() -> None:
    phi = np.concatenate([np.linspace(0.1, 0.9, 70), 1 - np.linspace(1e-6, 1e-4, 30)])  # 30 within fp16 of 1
    assert saturated_share(phi) == pytest.approx(0.30)
    assert spread_warning(phi) is not None
    assert saturated_share([0.3]) == 0.0
