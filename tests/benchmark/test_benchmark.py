"""benchmark.py: pure computations on fake timings, report structure, and a tiny end-to-end run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import benchmark
from utils.benchmark.report import markdown
from utils.benchmark.runner import parse_skip, plain_counterpart
from utils.benchmark.stats import (
    check_goals,
    gflops_per_s,
    latency_metrics,
    median,
    mixed_metrics,
    onnx_metrics,
    paired_ratio,
    ratio,
    router_metrics,
    summarize,
)
from utils.benchmark.timing import interleaved


def _s(median: float) -> dict:
    return summarize([median])


# ---- pure computations -----------------------------------------------------------------------
def test_summarize_quartiles_and_spread() -> None:
    s = summarize([40.0, 10.0, 30.0, 20.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (25.0, 17.5, 32.5, 10.0, 40.0, 4)
    one = summarize([7.0])
    assert one["median"] == one["q1"] == one["q3"] == 7.0
    with pytest.raises(ValueError):
        summarize([])


def test_ratio_and_rate_handle_missing_values() -> None:
    assert ratio(3.0, 2.0) == 1.5 and ratio(None, 2.0) is None and ratio(1.0, 0.0) is None
    assert gflops_per_s(10.0, 50.0) == pytest.approx(200.0)


def test_latency_metrics_from_fake_timings() -> None:
    lat = {"easy": _s(100.0), "hard": _s(200.0), "plain": _s(95.0)}
    m = latency_metrics(lat, {"easy": 10.0, "hard": 16.0, "plain": 10.0})
    assert m["gflops_per_s"] == pytest.approx({"easy": 100.0, "hard": 80.0, "plain": 10.0 / 0.095})
    assert m["routing_overhead"] == pytest.approx(100.0 / 95.0)
    assert m["hard_vs_easy_gflops_per_s"] == pytest.approx(0.8)


def test_paired_ratio_cancels_a_drift_between_rounds() -> None:
    easy, plain = summarize([100.0, 300.0, 110.0]), summarize([95.0, 290.0, 100.0])  # round 2: machine slowed
    assert paired_ratio([easy], [plain]) == pytest.approx(100 / 95)  # rounds: 1.053, 1.034, 1.100
    assert median(easy) / median(plain) == pytest.approx(1.1)  # the ratio of medians mixes rounds
    parts = paired_ratio([summarize([1.0, 2.0]), summarize([3.0, 4.0])], [summarize([5.0, 5.0])])
    assert parts == pytest.approx((4 / 5 + 6 / 5) / 2)
    assert paired_ratio([easy], [summarize([1.0])]) == pytest.approx(110.0)  # unpaired: ratio of medians
    assert paired_ratio([easy], [None]) is None


def test_mixed_onnx_and_router_metrics_from_fake_timings() -> None:
    mixed = mixed_metrics(_s(300.0), _s(100.0), _s(180.0), batch=16)
    assert mixed == pytest.approx({"ideal_ms": 280.0, "efficiency": 280.0 / 300.0, "images_per_s": 16 / 0.3,
                                   "ideal_images_per_s": 16 / 0.28})
    ort = {"dynamic_easy": _s(60.0), "dynamic_hard": _s(103.0), "static_easy": _s(50.0), "static_hard": _s(100.0)}
    o = onnx_metrics(ort, {"easy": _s(100.0), "hard": _s(200.0)}, {"easy": _s(150.0), "hard": _s(400.0)})
    assert o["easy"] == pytest.approx({"dynamic_vs_eager": 0.6, "static_vs_eager": 0.5, "dynamic_vs_static": 1.2,
                                       "dynamic_vs_fused_eager": 0.4})
    assert o["hard"]["dynamic_vs_static"] == pytest.approx(1.03)
    assert onnx_metrics(ort, {"easy": _s(100.0)})["easy"]["dynamic_vs_fused_eager"] is None
    r = router_metrics({1: _s(100.0), 8: _s(400.0), 16: _s(600.0)})
    assert r["images_per_s"] == pytest.approx({1: 10.0, 8: 20.0, 16: 16 / 0.6})
    assert r["speedup_vs_batch1"] == pytest.approx({1: 1.0, 8: 2.0, 16: 16 / 0.6 / 10.0})
    assert "collect_images_per_s" not in r
    assert router_metrics({1: _s(10.0)}, {1: _s(500.0), 16: _s(4000.0)})["collect_images_per_s"] == pytest.approx(
        {1: 2.0, 16: 4.0})


def _fake_record(img_size: int = 640) -> dict:
    lat = {"easy": _s(100.0), "hard": _s(190.0), "plain": _s(99.0)}
    gflops = {"easy": 30.0, "hard": 52.0, "plain": 30.0}
    ort = {"dynamic_easy": _s(60.0), "dynamic_hard": _s(130.0), "static_easy": _s(59.0), "static_hard": _s(120.0)}
    eager = {"easy": _s(100.0), "hard": _s(190.0)}
    steps = {1: _s(100.0), 8: _s(300.0), 16: _s(500.0)}
    collect = {1: _s(500.0), 16: _s(4000.0)}
    return {"cfg": "dy-fake", "img_size": img_size, "dynamic": True, "plain_cfg": "fake", "gflops": gflops,
            "modes": {"fast": {"latency": lat, "metrics": latency_metrics(lat, gflops)}},
            "mixed_batch": {"mode": "fast", "batch": 16, "n_hard": 8, "mixed": _s(1000.0), "easy_part": _s(400.0),
                            "hard_part": _s(560.0), "metrics": mixed_metrics(_s(1000.0), _s(400.0), _s(560.0), 16)},
            "onnx": {"status": "ok", "ort": ort, "eager": eager, "metrics": onnx_metrics(ort, eager)},
            "router_training": {"status": "ok", "img_size": img_size, "steps": steps, "collect": collect,
                                "metrics": router_metrics(steps, collect)}}


def test_goals_are_checked_against_the_issue_targets() -> None:
    goals = {g["goal"]: g for g in check_goals([_fake_record()], "fast")}
    assert goals["routing_overhead"]["value"] == pytest.approx(100 / 99) and goals["routing_overhead"]["met"]
    assert goals["hard_vs_easy_gflops_per_s"]["value"] == pytest.approx((52 / 0.19) / (30 / 0.1))
    assert goals["easy_gflops_per_s_640"]["value"] == pytest.approx(300.0) and goals["easy_gflops_per_s_640"]["met"]
    assert goals["onnx_vs_eager"]["value"] == pytest.approx(130 / 190) and not goals["onnx_vs_eager"]["met"]
    assert "onnx_vs_fused_eager" not in goals  # no fused-mode latency in this record
    assert goals["onnx_dynamic_vs_static"]["value"] == pytest.approx(130 / 120)
    assert not goals["onnx_dynamic_vs_static"]["met"]
    assert goals["mixed_efficiency"]["value"] == pytest.approx(0.96) and goals["mixed_efficiency"]["met"]
    assert goals["router_speedup"]["value"] == pytest.approx(3.2) and not goals["router_speedup"]["met"]
    at_320 = {g["goal"] for g in check_goals([_fake_record(320)], "fast")}
    assert "easy_gflops_per_s_640" not in at_320 and "routing_overhead" in at_320


def test_markdown_has_every_section() -> None:
    rec = _fake_record()
    result = {"meta": {"cpu": "fake cpu", "cpu_count": 2, "torch_threads": 2, "device": "cpu", "torch": "x",
                       "onnxruntime": "y", "git": "abc", "time": "now", "load_before": [1.0], "load_after": [1.0]},
              "configs": [rec], "goals": check_goals([rec], "fast")}
    md = markdown(result)
    for title in ("## Latency", "## Mixed batch", "## ONNX Runtime", "## Router training", "## Goals"):
        assert title in md
    assert "sample pass (frozen detectors and their losses, once per image) runs at 2.00 images/s at batch 1, " \
           "4.00 images/s at batch 16" in md
    assert "| `dy-fake` | 640 | fast | 100.0 [100.0–100.0] | 190.0 [190.0–190.0] | 99.0 [99.0–99.0] |" in md
    skipped = {**rec, "onnx": {"status": "skipped: ONNX export not available (test)"}}
    assert "skipped: ONNX export not available" in markdown({**result, "configs": [skipped]})


def test_interleaved_calls_round_robin() -> None:
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError):
        interleaved({"a": lambda: None}, reps=0, warmup=0)


def test_interleaved_settle_time_is_idle_and_not_counted() -> None:
    import time
    t0 = time.perf_counter()
    times = interleaved({"a": lambda: None, "b": lambda: None}, reps=3, warmup=0, settle_s=0.02)
    assert time.perf_counter() - t0 >= 6 * 0.02  # slept before each of the 6 timed calls
    assert all(t < 10 for v in times.values() for t in v)  # ms of the calls alone, not the 20 ms sleeps
    with pytest.raises(ValueError, match="settle_s"):
        interleaved({"a": lambda: None}, reps=1, warmup=0, settle_s=-1)


def test_skip_parsing_and_plain_counterparts() -> None:
    assert parse_skip("onnx, router") == {"onnx", "router"} and parse_skip("") == set()
    assert parse_skip(["mixed"]) == {"mixed"}
    with pytest.raises(ValueError, match="unknown sections"):
        parse_skip("onnx,gpu")
    assert Path(plain_counterpart("dy-yolov7")).name == "yolov7.yaml"
    assert Path(plain_counterpart("dy-yolov7-tiny")).name == "yolov7-tiny.yaml"
    assert plain_counterpart("yolov7") is None


# ---- end to end -------------------------------------------------------------------------------
def _tiny_run(tmp_path: Path, **kw) -> dict:
    opts = dict(cfg="dy-yolov7-tiny", img_size=64, reps=2, warmup=0, batch=4, router_batch=2, threads=1,
                device="cpu", out=str(tmp_path))
    kw["skip"] = ",".join(filter(None, [kw.get("skip", ""), "peak,deploy"]))  # tested in test_deploy.py
    return benchmark.run(**{**opts, **kw})


def test_end_to_end_tiny(tmp_path: Path) -> None:
    result = _tiny_run(tmp_path, skip="onnx")
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    md = (tmp_path / "benchmark.md").read_text()
    assert saved["configs"] == json.loads(json.dumps(result["configs"]))
    rec = saved["configs"][0]
    assert rec["plain_cfg"] == "yolov7-tiny" and set(rec["gflops"]) == {"easy", "hard", "plain"}
    for mode in ("fused", "fast"):
        lat, m = rec["modes"][mode]["latency"], rec["modes"][mode]["metrics"]
        assert set(lat) == {"easy", "hard", "plain"} and all(len(s["times"]) == 2 for s in lat.values())
        med = {r: sorted(s["times"])[0] / 2 + sorted(s["times"])[1] / 2 for r, s in lat.items()}
        t = {r: s["times"] for r, s in lat.items()}
        per_round = [t["easy"][i] / t["plain"][i] for i in range(2)]
        assert m["routing_overhead"] == pytest.approx(sum(per_round) / 2)  # median of the rounds' ratios
        rate = {r: rec["gflops"][r] / (med[r] / 1e3) for r in med}
        assert m["gflops_per_s"] == pytest.approx(rate)
        g = rec["gflops"]
        hard_vs_easy = [g["hard"] / t["hard"][i] / (g["easy"] / t["easy"][i]) for i in range(2)]
        assert m["hard_vs_easy_gflops_per_s"] == pytest.approx(sum(hard_vs_easy) / 2)
    mb = rec["mixed_batch"]
    assert (mb["batch"], mb["n_hard"], mb["mode"]) == (4, 2, "fast")
    rounds = zip(mb["easy_part"]["times"], mb["hard_part"]["times"], mb["mixed"]["times"])
    assert mb["metrics"]["efficiency"] == pytest.approx(sum((e + h) / m for e, h, m in rounds) / 2)
    router = rec["router_training"]
    assert sorted(int(b) for b in router["steps"]) == [1, 2, 8]
    ips = router["metrics"]["images_per_s"]
    assert ips["2"] == pytest.approx(2 / (router["steps"]["2"]["median"] / 1e3))
    assert sorted(router["collect"]) == ["1", "8"]  # the one-off sample pass, at batch 1 and the largest
    assert router["metrics"]["collect_images_per_s"]["8"] == pytest.approx(8 / (router["collect"]["8"]["median"] / 1e3))
    assert "onnx" not in rec and {g["goal"] for g in saved["goals"]} >= {"routing_overhead", "mixed_efficiency"}
    for title in ("## Latency", "## Mixed batch", "## Router training", "## Goals"):
        assert title in md
    assert saved["meta"]["torch_threads"] == 1 and saved["meta"]["options"]["skip"] == "onnx,peak,deploy"


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_onnx_section_reports_a_missing_exporter(tmp_path: Path, monkeypatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # import onnx / onnxruntime -> ImportError
    result = _tiny_run(tmp_path, reps=1, skip="fused,fast,mixed,router")
    status = result["configs"][0]["onnx"]["status"]
    assert status.startswith("skipped: ONNX export not available")
    assert "ONNX export not available" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.slow
def test_onnx_section_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    rec = _tiny_run(tmp_path, reps=1, skip="fused,mixed,router")["configs"][0]
    onnx = rec["onnx"]
    assert onnx["status"] == "ok", onnx["status"]
    assert set(onnx["ort"]) == {"dynamic_easy", "dynamic_hard", "static_easy", "static_hard"}
    for route in ("easy", "hard"):
        m = onnx["metrics"][route]
        assert m["dynamic_vs_static"] == pytest.approx(onnx["ort"][f"dynamic_{route}"]["median"]
                                                       / onnx["ort"][f"static_{route}"]["median"])
        assert m["dynamic_vs_eager"] == pytest.approx(onnx["ort"][f"dynamic_{route}"]["median"]
                                                      / onnx["eager"][route]["median"])


def test_cli_rejects_unknown_sections(capsys) -> None:
    assert benchmark.main(["--skip", "nope", "--out", "/nonexistent/never-written"]) == 1
    assert "unknown sections" in capsys.readouterr().err
