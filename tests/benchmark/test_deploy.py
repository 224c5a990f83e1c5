"""The benchmark's deploy section: backends per route and batch, peaks, ratios, goals, plot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmark
from utils.benchmark.deploy import deploy_goals, deploy_metrics
from utils.cpu import cpu_info


def _s(median: float) -> dict:
    return {"median": median, "q1": median, "q3": median, "n": 3, "times": [median] * 3}


def _fake_latency() -> dict:
    fast = {"b1_dynamic_easy": _s(10), "b1_dynamic_hard": _s(20), "b4_dynamic_easy": _s(32), "b4_dynamic_hard": _s(64),
            "mixed": _s(50), "mixed_easy_part": _s(16), "mixed_hard_part": _s(32)}
    ov8 = {"b1_dynamic_easy": _s(2.5), "b1_dynamic_hard": _s(7), "b1_static_easy": _s(2.5), "b1_static_hard": _s(5),
           "b4_dynamic_easy": _s(8), "b4_dynamic_hard": _s(16), "b4_static_easy": _s(8), "b4_static_hard": _s(16),
           "mixed": _s(30), "mixed_easy_part": _s(4), "mixed_hard_part": _s(8)}
    return {"pt_fast": fast, "ov_int8": ov8}


def test_metrics_per_image_rates_fractions_and_ratios() -> None:
    peaks = {"fp32": {"measured": 100.0, "theoretical": {"gflops": 200.0}},
             "int8": {"measured": 400.0, "theoretical": {"gflops": 800.0}}}
    m = deploy_metrics(_fake_latency(), {"easy": 1.0, "hard": 2.0}, (1, 4), peaks)
    assert m["pt_fast"]["b4_easy"]["ms_per_image"] == 8  # 32 ms for 4 images
    assert m["pt_fast"]["b1_easy"]["gflops_per_s"] == pytest.approx(100.0)  # 1 GFLOP in 10 ms
    assert m["pt_fast"]["b1_easy"]["fraction_of_measured_peak"] == pytest.approx(1.0)
    assert m["pt_fast"]["b1_easy"]["fraction_of_theoretical_peak"] == pytest.approx(0.5)
    assert m["ov_int8"]["b1_easy"]["fraction_of_measured_peak"] == pytest.approx(1.0)  # 400 GOP/s vs int8 peak
    assert m["pt_fast"]["b1_easy"]["dynamic_vs_static"] is None  # PyTorch has no static export
    assert m["ov_int8"]["b1_hard"]["dynamic_vs_static"] == pytest.approx(1.4)
    assert m["pt_fast"]["mixed_efficiency"] == pytest.approx(48 / 50)
    assert m["vs_fast"]["ov_int8"]["b1_easy"] == pytest.approx(0.25)


def test_goals_use_the_worst_route_and_the_cpu_class() -> None:
    rec = {"deploy": {"metrics": deploy_metrics(_fake_latency(), {"easy": 1.0, "hard": 2.0}, (1, 4), None)}}
    goals = {k: (op, target, v) for k, _, op, target, v in deploy_goals(rec, frozenset({"avx512f"}))}
    assert goals["ov_int8_vs_fast"] == ("<=", 0.3, pytest.approx(0.35))  # hard route: 7 / 20
    assert goals["ov_int8_dynamic_vs_static"][2] == pytest.approx(1.4)
    assert goals["ov_int8_routing_overhead"][2] == pytest.approx(1.0)
    assert goals["ov_int8_mixed"][2] == pytest.approx(12 / 30)
    assert goals["fast_vs_best_fp32"][2] == pytest.approx(1.0)  # the only fp32 backend here
    assert goals["bf16_vs_fast"][2] is None  # not measured
    avx2 = {k: t for k, _, _, t, _ in deploy_goals(rec, frozenset({"avx2"}))}
    assert avx2["ov_int8_vs_fast"] == 0.6


@pytest.mark.long(40)
@pytest.mark.timeout(600)
def test_deploy_section_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    res = benchmark.run(cfg=["dy-yolov7-tiny"], img_size=[32], reps=1, warmup=0, deploy_batch=[1, 2],
                        skip="router,onnx,mixed,fused", threads=1, out=str(tmp_path), calib_images=4,
                        peak_n=256)
    d = res["configs"][0]["deploy"]
    expected = {"pt_fused", "pt_fast", "ort_fp32", "ort_int8", "ov_fp32", "ov_int8"}
    if cpu_info().bf16:
        expected |= {"pt_bf16", "ov_bf16"}
    assert expected <= set(d["latency"]) and all(d["status"][k].startswith("ok") for k in expected)
    assert {"b1_static_easy", "b2_dynamic_hard", "mixed"} <= set(d["latency"]["ov_int8"])
    assert set(d["latency"]["ort_int8"]) == {"b1_static_easy", "b1_static_hard", "b2_static_easy", "b2_static_hard"}
    assert res["peaks"]["fp32"]["measured"] > 0 and res["peaks"]["int8"]["measured"] > 0
    goals = {g["goal"] for g in res["goals"]}
    assert {"ov_int8_vs_fast", "fast_vs_best_fp32", "ov_fp32_dynamic_vs_static", "ort_fp32_mixed"} <= goals
    md = Path(res["files"]["markdown"]).read_text()
    assert "Deployment backends" in md and "Measured peak" in md and "CPU flags" in md
    assert Path(res["files"]["plot"]).stat().st_size > 10_000
    assert json.loads(Path(res["files"]["json"]).read_text())["configs"][0]["deploy"]["batches"] == [1, 2]
