"""Route latencies: both routes timed in turns, a hard route measured at or below the easy one re-measured."""
from __future__ import annotations

import time

import pytest
import torch

from utils.routing import latency


class FakeRoutes(torch.nn.Module):
    """A 'dynamic model' whose routes sleep: ``costs`` is a list of (easy s, hard s) per measurement round."""

    is_dynamic = True
    threshold_input = True

    def __init__(self, costs: list[tuple[float, float]], calls_per_round: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.costs, self.per_round, self.calls = costs, calls_per_round, []

    def forward(self, x, threshold: float):
        route = "easy" if threshold >= 1 else "hard"
        self.calls.append(route)
        rnd = min((len(self.calls) - 1) // self.per_round, len(self.costs) - 1)
        time.sleep(self.costs[rnd][route == "hard"])


def test_routes_are_timed_in_turns() -> None:
    model = FakeRoutes([(0.002, 0.006)], calls_per_round=10**6)
    ms = latency.route_latency(model, 8, reps=3, warmup=1)
    assert model.calls == ["easy", "hard"] + ["easy", "hard"] * 3  # warm-up each, then alternating
    assert 1.5 < ms["easy"] < 5 and 5 < ms["hard"] < 12 and model.training


def test_an_inverted_measurement_is_repeated() -> None:
    # round 1 (2 warm-up + 2x3 calls): the hard route looks faster; round 2 measures it right
    model = FakeRoutes([(0.006, 0.002), (0.002, 0.006)], calls_per_round=8)
    ms = latency.route_latency(model, 8, reps=3, warmup=1)
    assert ms["hard"] > ms["easy"]
    assert len(model.calls) == 8 + 2 + 2 * 6  # the second round doubles the repetitions


def test_a_model_that_stays_inverted_is_returned_after_three_rounds() -> None:
    model = FakeRoutes([(0.003, 0.001)], calls_per_round=10**6)
    ms = latency.route_latency(model, 8, reps=1, warmup=0)
    assert ms["hard"] < ms["easy"] and len(model.calls) == 2 + 4 + 8


def test_static_models_are_refused() -> None:
    model = FakeRoutes([(0.0, 0.0)], 1)
    model.is_dynamic = False
    with pytest.raises(ValueError, match="dynamic model"):
        latency.route_latency(model, 8)
