"""Oracle routing: per-image gains of the hard route, the oracle sweep and the routing efficiency."""
from __future__ import annotations

import numpy as np
import pytest

from utils.evaluation.metrics import coco_evaluate
from utils.routing.oracle import image_gains, oracle_order, oracle_points, routing_efficiency, sweep_gain
from utils.routing.sweep import SweepData, policy_auc, random_points, router_points

CELLS = ((2.0, 2.0), (24.0, 24.0), (46.0, 2.0))  # where objects sit, 16 px boxes that never overlap


def _box(x: float, y: float, jitter: float = 0.0) -> list[float]:
    return [x + jitter, y + jitter, x + 16 + jitter, y + 16]


def _graded(n: int, seed: int = 0) -> SweepData:
    """Images of difficulty h ~ U(0, 1) with 1-3 objects of 2 classes: detector 1 misses an object with
    probability 0.8 h, detector 2 with 0.1; boxes jitter by up to 3 px and a low false positive appears
    in 30% of the images. φ = h, so it says something about the gain, but not everything."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0, 1, n)
    gts, det1, det2 = [], [], []
    for i in range(n):
        objs = [(int(rng.integers(2)), CELLS[j]) for j in range(int(rng.integers(1, 4)))]
        gts.append(np.array([[c, *_box(*xy)] for c, xy in objs]).reshape(-1, 5))
        for dets, miss in ((det1, 0.8 * h[i]), (det2, 0.1)):
            rows = [[*_box(*xy, rng.uniform(0, 3)), rng.uniform(0.3, 1), c] for c, xy in objs if rng.uniform() >= miss]
            if rng.uniform() < 0.3:
                rows.append([*_box(2.0, 46.0), rng.uniform(0.05, 0.6), int(rng.integers(2))])
            dets.append(np.array(rows).reshape(-1, 6))
    return SweepData(["a", "b"], gts, det1, det2, h, [(64, 64)] * n)


def _with_phi(data: SweepData, phi: np.ndarray) -> SweepData:
    return SweepData(data.names, data.gts, data.det1, data.det2, np.asarray(phi, np.float64), data.sizes)


def _hand_made() -> SweepData:
    """Image 0: detector 2 finds the object detector 1 misses; 1: both find it; 2: only detector 1 does;
    3: no object, detector 2 adds a confident false positive."""
    gt = [[0, 10.0, 10.0, 30.0, 30.0]]
    hit, miss = [10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0]
    gts = [np.array(gt)] * 3 + [np.zeros((0, 5))]
    det1 = [np.array([[*miss, 0.6, 0]]), np.array([[*hit, 0.9, 0]]), np.array([[*hit, 0.8, 0]]), np.zeros((0, 6))]
    det2 = [np.array([[*hit, 0.6, 0]]), np.array([[*hit, 0.9, 0]]), np.array([[*miss, 0.8, 0]]),
            np.array([[*miss, 0.95, 0]])]
    return SweepData(["a"], gts, det1, det2, np.array([0.9, 0.5, 0.1, 0.3]), [(64, 64)] * 4)


def test_own_gains_by_hand() -> None:
    assert image_gains(_hand_made(), "own") == pytest.approx([1.0, 0.0, -1.0, 0.0], abs=1e-12)


def test_contribution_gains_by_hand() -> None:
    # all easy: AP = 67/101 (precision 1 up to recall 2/3, exact boxes so every IoU threshold agrees)
    expected = [1 - 67 / 101, 0.0, 34 / 101 - 67 / 101, 67 / 101 * (2 / 3 - 1)]
    assert image_gains(_hand_made(), "contribution") == pytest.approx(expected, abs=1e-12)


def test_gains_equal_full_coco_evaluation() -> None:
    data = _graded(30, seed=1)
    easy = data.score(np.zeros(30, bool))["map"]
    contribution = [data.score(np.arange(30) == i)["map"] - easy for i in range(30)]
    own = [coco_evaluate([g], [b], data.names)["map"] - coco_evaluate([g], [a], data.names)["map"]
           for g, a, b in zip(data.gts, data.det1, data.det2)]
    assert image_gains(data, "contribution") == pytest.approx(contribution, abs=1e-12)
    assert image_gains(data, "own") == pytest.approx(own, abs=1e-12)


def test_gains_when_one_route_finds_nothing() -> None:
    data = _graded(12, seed=2)
    blind = SweepData(data.names, data.gts, [np.zeros((0, 6))] * 12, data.det2, data.phi, data.sizes)
    easy = blind.score(np.zeros(12, bool))["map"]
    assert easy == 0.0
    expected = [blind.score(np.arange(12) == i)["map"] for i in range(12)]
    assert image_gains(blind, "contribution") == pytest.approx(expected, abs=1e-12)
    assert (image_gains(blind, "own") > 0).all()


def test_unknown_gain_kind_and_deterministic_ties() -> None:
    with pytest.raises(ValueError, match="gain kind"):
        image_gains(_hand_made(), "mean")
    assert oracle_order(np.array([0.0, 0.2, 0.0, 0.2, -0.1])).tolist() == [1, 3, 0, 2, 4]


@pytest.mark.parametrize("kind", ["own", "contribution"])
@pytest.mark.parametrize("phi", ["random", "informative", "anti-correlated"])
def test_oracle_is_the_ceiling(kind: str, phi: str) -> None:
    data = _graded(60)
    values = {"random": np.random.default_rng(5).uniform(size=60), "informative": data.phi,
              "anti-correlated": 1 - data.phi}[phi]
    router = policy_auc(router_points(_with_phi(data, values)))
    oracle = policy_auc(oracle_points(data, kind=kind))
    assert oracle > router + 0.02, (oracle, router)


def test_oracle_points_follow_the_gains() -> None:
    data = _hand_made()
    pts = oracle_points(data, gflops={"easy": 1.0, "hard": 2.0}, percents=(0, 25, 50, 100), kind="own")
    assert [p.hard_fraction for p in pts] == [0.0, 0.25, 0.5, 1.0]
    assert pts[1].map == pytest.approx(1.0)  # image 0, the one detector 2 rescues, goes hard first
    assert pts[1].gflops == 1.25 and np.isnan(pts[1].threshold)


def test_efficiency_is_one_when_phi_ranks_as_the_oracle() -> None:
    data = _graded(40)
    gains = image_gains(data)
    phi = np.empty(40)
    phi[oracle_order(gains)] = np.linspace(0.99, 0.01, 40)
    perfect = _with_phi(data, phi)
    aucs = [policy_auc(pts) for pts in (router_points(perfect), random_points(data), oracle_points(data, gains=gains))]
    assert aucs[2] > aucs[1] + 0.1
    assert routing_efficiency(*aucs) == pytest.approx(1.0, abs=1e-9)


def test_efficiency_is_about_zero_for_random_phi() -> None:
    data = _graded(100, seed=3)
    oracle, rand = policy_auc(oracle_points(data)), policy_auc(random_points(data, repeats=5))
    efficiencies = [routing_efficiency(policy_auc(router_points(_with_phi(data, np.random.default_rng(s).uniform(
        size=100)))), rand, oracle) for s in range(6)]
    assert abs(np.mean(efficiencies)) < 0.15, efficiencies
    informative = routing_efficiency(policy_auc(router_points(data)), rand, oracle)
    assert informative > 0.3  # the same data tells a useful φ apart


def test_efficiency_undefined_cases() -> None:
    assert routing_efficiency(0.55, 0.5, 0.6) == pytest.approx(0.5)
    assert routing_efficiency(0.4, 0.5, 0.6) == pytest.approx(-1.0)
    assert routing_efficiency(0.6, 0.5, 0.5) is None
    assert routing_efficiency(0.6, 0.5, 0.5 + 1e-10) is None
    assert routing_efficiency(0.6, 0.5, 0.4) is None
    for missing in ((None, 0.5, 0.6), (0.6, None, 0.6), (0.6, 0.5, None)):
        assert routing_efficiency(*missing) is None


def test_sweep_gain_falls_back_to_own_gains_over_budget() -> None:
    data = _graded(20)
    assert sweep_gain(data) == "contribution"
    assert sweep_gain(data, budget=10) == "own"
    nothing = SweepData(["a"], [np.zeros((0, 5))] * 3, [np.zeros((0, 6))] * 3, [np.zeros((0, 6))] * 3,
                        np.zeros(3), [(64, 64)] * 3)
    assert sweep_gain(nothing) == "contribution" and image_gains(nothing).tolist() == [0.0] * 3
