"""The routing dial: threshold tables, Eq. 14 fractions, threshold specs and stability."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utils.routing.calibration import (
    NO_TABLE,
    calibration_record,
    fraction_for_budget,
    hard_fraction,
    resolve_threshold,
    stability_report,
    table_threshold,
    threshold_table,
)


def _beta_scores(n: int, seed: int) -> np.ndarray:
    """n distinct difficulty scores in (0, 1), skewed like a trained router's."""
    return np.random.default_rng(seed).beta(2.0, 5.0, size=n)


@pytest.fixture(scope="module")
def record() -> dict:
    """Calibration of 1000 scores with route latencies 20/50 ms and 100/180 GFLOPs."""
    return calibration_record(_beta_scores(1000, 0), easy_ms=20.0, hard_ms=50.0,
                              easy_gflops=100.0, hard_gflops=180.0, img_size=640)


def test_table_endpoints_and_monotonic() -> None:
    table = threshold_table(_beta_scores(200, 1))
    assert sorted(table) == list(range(101))
    assert table[0] >= 1.0 and table[100] == 0.0
    values = [table[k] for k in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert all(type(k) is int and type(v) is float for k, v in table.items())


def test_table_is_exact_on_distinct_scores() -> None:
    n = 200
    phi = _beta_scores(n, 2)
    table = threshold_table(phi)
    for k, threshold in table.items():
        assert abs(hard_fraction(phi, threshold) - k / 100) <= 1 / n
    assert not np.isin(list(table.values()), phi).any()  # midpoints: no score sits on a threshold


def test_table_with_ties_keeps_tied_scores_together() -> None:
    phi = [0.2] * 4 + [0.6] * 6          # only 0%, 60% and 100% hard are achievable
    table = threshold_table(phi, fractions=[0, 20, 30, 50, 60, 80, 100])
    assert table[0] == 1.0 and table[100] == 0.0
    assert table[50] == table[60] == pytest.approx(0.4)   # 50% -> nearest achievable 60%
    assert table[20] == 1.0                               # 0% is nearer than 60%
    assert table[30] == 1.0                               # equally near: fewer hard wins
    assert table[80] == pytest.approx(0.4)                # 60% is nearer than 100%


def test_table_accepts_tensors_and_rejects_bad_input() -> None:
    t = torch.tensor([0.1, 0.9], requires_grad=True)
    assert threshold_table(t, fractions=[50]) == {50: pytest.approx(0.5)}
    for bad in ([], [0.5, float("nan")], [1.5]):
        with pytest.raises(ValueError):
            threshold_table(bad)
    with pytest.raises(ValueError, match="whole"):
        threshold_table([0.5], fractions=[12.5])
    with pytest.raises(ValueError, match="within"):
        threshold_table([0.5], fractions=[101])


def test_fraction_for_a_latency_or_gflops_budget() -> None:
    assert fraction_for_budget(20, 20, 50) == 0.0
    assert fraction_for_budget(30, 20, 50) == pytest.approx(1 / 3)
    assert fraction_for_budget(50, 20, 50) == 1.0
    assert fraction_for_budget(80, 20, 50) == 1.0          # above the hard route: all hard
    assert fraction_for_budget(120, 100, 180, "GFLOPs") == pytest.approx(0.25)
    k = fraction_for_budget(150, 100, 180, "GFLOPs")
    assert (1 - k) * 100 + k * 180 == pytest.approx(150)    # Eq. 14 inverted


def test_fraction_errors() -> None:
    with pytest.raises(ValueError, match=r"achievable: 20\.\.50 ms"):
        fraction_for_budget(10, 20, 50)
    with pytest.raises(ValueError, match="must cost more"):
        fraction_for_budget(30, 50, 50)
    with pytest.raises(ValueError, match="must cost more"):
        fraction_for_budget(150, 180, 100, "GFLOPs")
    with pytest.raises(ValueError, match="finite"):
        fraction_for_budget(float("nan"), 100, 180, "GFLOPs")


def test_table_threshold_interpolates(record: dict) -> None:
    table = record["table"]
    mid = table_threshold(table, 12.5)
    assert mid == pytest.approx((table[12] + table[13]) / 2)
    with pytest.raises(ValueError, match="outside"):
        table_threshold({10: 0.6, 20: 0.5}, 5)


def test_resolve_numbers_and_percentiles(record: dict) -> None:
    assert resolve_threshold(None, None) == (0.5, "threshold 0.5 (default)")
    assert resolve_threshold(None, record, default=0.3)[0] == 0.3
    assert resolve_threshold(0.35, None)[0] == 0.35
    assert resolve_threshold(" 0.35 ", None)[0] == 0.35
    threshold, text = resolve_threshold("p30", record)
    assert threshold == record["table"][30] and "30% hard" in text
    assert resolve_threshold("P12.5", record)[0] == pytest.approx(table_threshold(record["table"], 12.5))


def test_resolve_targets(record: dict) -> None:
    threshold, text = resolve_threshold(None, record, target_latency=30.0)   # 1/3 hard
    assert threshold == pytest.approx(table_threshold(record["table"], 100 / 3))
    assert "33.3% hard" in text and "30 ms" in text
    assert resolve_threshold(None, record, target_latency=99.0)[0] == 0.0
    assert resolve_threshold(None, record, target_gflops=100.0)[0] == 1.0
    given = resolve_threshold(None, record, target_gflops=20.0, gflops={"easy": 10.0, "hard": 30.0})
    assert given[0] == pytest.approx(record["table"][50])
    assert resolve_threshold(None, record, target_latency=2.0, latencies=(1.0, 3.0))[0] == \
        pytest.approx(record["table"][50])


def test_resolve_errors(record: dict) -> None:
    for bad in ("fast", "p", "p101", "30%", "nan", float("inf"), [0.5]):
        with pytest.raises(ValueError, match="threshold|within|range"):
            resolve_threshold(bad, record)
    with pytest.raises(ValueError, match="'pK'"):
        resolve_threshold("fast", record)
    for calibration in (None, {}, {"table": {}}):
        with pytest.raises(ValueError, match="no routing calibration; run train_router.py"):
            resolve_threshold("p30", calibration)
    no_costs = calibration_record(_beta_scores(50, 3))
    with pytest.raises(ValueError, match="pass them or calibrate"):
        resolve_threshold(None, no_costs, target_latency=30.0)
    with pytest.raises(ValueError, match=NO_TABLE):
        resolve_threshold(None, None, target_latency=30.0, latencies=(20.0, 50.0))
    with pytest.raises(ValueError, match="achievable"):
        resolve_threshold(None, record, target_latency=5.0)
    with pytest.raises(ValueError, match="one way"):
        resolve_threshold("p30", record, target_latency=30.0)


def test_stability_on_heldout_scores() -> None:
    # 5000 + 5000 i.i.d. scores: the achieved fraction has std <= sqrt(2 * 0.25 / 5000) = 0.01
    table = threshold_table(_beta_scores(5000, 4))
    report = stability_report(table, _beta_scores(5000, 5))
    assert sorted(report) == [10, 30, 50, 70, 90]
    for k, achieved in report.items():
        assert abs(achieved - k / 100) < 0.035


def test_hard_fraction_follows_route_rule() -> None:
    phi = [0.0, 0.3, 0.7, 1.0]
    assert hard_fraction(phi, 0.0) == 1.0 and hard_fraction(phi, -1) == 1.0
    assert hard_fraction(phi, 1.0) == 0.0
    assert hard_fraction(phi, 0.5) == 0.5


def test_record_is_plain_python(record: dict) -> None:
    assert json.loads(json.dumps(record))["latency_ms"] == {"easy": 20.0, "hard": 50.0}
    assert record["gflops"] == {"easy": 100.0, "hard": 180.0}
    assert record["img_size"] == 640 and record["n_images"] == 1000 and len(record["table"]) == 101
    bare = calibration_record(torch.rand(10, dtype=torch.float32), n_images=12)
    assert bare["latency_ms"] is None and bare["gflops"] is None and bare["n_images"] == 12
    json.dumps(bare)
    with pytest.raises(ValueError, match="both"):
        calibration_record([0.5], easy_ms=20.0)
