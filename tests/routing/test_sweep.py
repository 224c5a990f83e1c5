"""Accuracy-speed sweep: assembly from one pass equals routed re-runs; AUC-Policy of policies."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import test as test_script
from data.make_demo_data import make_demo_dataset
from models.yolo import build_model
from tests.conftest import randomize_bn
from utils.options import options_dict
from utils.routing.sweep import SweepData, distinct, policy_auc, random_points, router_points
from utils.weights.checkpoints import load_checkpoint, save_checkpoint

NAMES = ["circle", "square", "triangle", "cross"]


def _data(n: int, seed: int = 0) -> SweepData:
    """Synthetic per-image results: detector 2 finds the one object, detector 1 only on easy images."""
    rng = np.random.default_rng(seed)
    gts, det1, det2 = [], [], []
    phi = rng.uniform(0, 1, n)
    for i in range(n):
        box = np.array([10.0, 10.0, 30.0, 30.0])
        gts.append(np.array([[0, *box]]))
        hit = np.array([[*box, 0.9, 0]])
        miss = np.array([[40.0, 40.0, 60.0, 60.0, 0.9, 0]])
        det2.append(hit)
        det1.append(hit if phi[i] < 0.5 else miss)  # hard images (high φ) need detector 2
    return SweepData(["a"], gts, det1, det2, phi, [(64, 64)] * n)


def test_router_points_follow_phi_and_costs() -> None:
    data = _data(20)
    pts = router_points(data, gflops={"easy": 1.0, "hard": 3.0}, latency={"easy": 10.0, "hard": 20.0})
    assert [p.percent for p in pts] == list(range(0, 101, 10))
    assert [p.hard_fraction for p in pts] == pytest.approx([k / 100 for k in range(0, 101, 10)])
    assert pts[0].gflops == 1.0 and pts[-1].gflops == 3.0 and pts[5].latency_ms == pytest.approx(15.0)
    assert pts[-1].map50 == pytest.approx(1.0) and pts[0].map50 < 0.9
    maps = [p.map50 for p in pts]
    assert maps == sorted(maps)  # the oracle-like router only ever adds good images


def test_router_beats_random_on_informative_phi() -> None:
    data = _data(40)
    router, rand = router_points(data), random_points(data, repeats=5)
    assert policy_auc(router) > policy_auc(rand) + 0.1
    assert rand[0].map == pytest.approx(router[0].map) and rand[-1].map == pytest.approx(router[-1].map)


def test_anti_correlated_phi_scores_below_random() -> None:
    data = _data(40)
    flipped = SweepData(data.names, data.gts, data.det1, data.det2, 1 - data.phi, data.sizes)
    worst, rand = policy_auc(router_points(flipped)), policy_auc(random_points(data, repeats=5))
    assert worst + 0.1 < rand < policy_auc(router_points(data)) - 0.1


def test_assemble_checks_mask_and_distinct_points() -> None:
    data = _data(4)
    with pytest.raises(ValueError, match="route mask"):
        data.assemble(np.ones(3, bool))
    pts = router_points(data)  # 4 images: 11 requested points, 5 distinct fractions
    assert len(distinct(pts)) == 5


@pytest.fixture(scope="module")
def self_labelled(tmp_path_factory) -> dict:
    """Demo images re-labelled with a random model's detector-2 output, so detector 2 scores high."""
    root = tmp_path_factory.mktemp("sweep")
    data_yaml = make_demo_dataset(root / "demo", n_train=0, n_val=10, img_size=64, seed=3)
    model = randomize_bn(build_model("dy-yolov7-tiny", names=NAMES)).eval()
    weights = save_checkpoint(root / "dy.pt", model, names=NAMES)
    kw = dict(weights=str(weights), img_size=64, batch_size=5, workers=0, conf_thres=0.001, device="cpu")
    first = root / "first"
    test_script.run(data=data_yaml, dy_thres=0.0, save_json=True, plots=False, save_dir=first, **kw)
    _relabel(json.loads((first / "predictions.json").read_text()), root / "demo")
    return {"data": data_yaml, "model": model, "kw": kw, "root": root}


def _relabel(preds: list[dict], root: Path) -> None:
    """Top-2 detections per image become its YOLO labels (and the old label cache is dropped)."""
    for cache in root.glob("labels/*.cache"):
        cache.unlink()
    for img in (root / "images" / "val").glob("*.jpg"):
        h, w = cv2.imread(str(img)).shape[:2]
        small = (p for p in preds if p["image_id"] == img.stem and p["bbox"][2] * p["bbox"][3] < 0.3 * w * h)
        mine = sorted(small, key=lambda p: -p["score"])[:2]  # not the clipped whole-image boxes both detectors give
        lines = [f"{p['category_id']} {(p['bbox'][0] + p['bbox'][2] / 2) / w:.6f} "
                 f"{(p['bbox'][1] + p['bbox'][3] / 2) / h:.6f} {p['bbox'][2] / w:.6f} {p['bbox'][3] / h:.6f}"
                 for p in mine]
        (root / "labels" / "val" / f"{img.stem}.txt").write_text("\n".join(lines) + "\n")


def test_sweep_equals_rerun_at_fixed_threshold(self_labelled: dict) -> None:
    s = self_labelled
    out = test_script.run(data=s["data"], dy_sweep=True, plots=True, save_dir=s["root"] / "sweep", **s["kw"])
    sweep = out["dynamic"]["sweep"]
    router = sweep["points"]["router"]
    assert router[-1]["map"] > router[0]["map"] + 0.05  # detector 2 is the labeller
    for point in (router[3], router[6]):
        rerun = test_script.run(data=s["data"], dy_thres=point["threshold"], plots=False,
                                save_dir=s["root"] / f"re{point['percent']:g}", **s["kw"])
        assert rerun["dynamic"]["hard"] / rerun["images"] == pytest.approx(point["hard_fraction"])
        assert rerun["map"] == pytest.approx(point["map"], abs=1e-9)
        assert rerun["map50"] == pytest.approx(point["map50"], abs=1e-9)
    with open(s["root"] / "sweep" / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 33 and {r["policy"] for r in rows} == {"oracle", "router", "random"}
    assert float(rows[0]["latency_ms"]) > 0 and float(rows[10]["gflops"]) > float(rows[0]["gflops"])
    for name in ("sweep_gflops.png", "sweep_latency.png", "phi_histogram.png", "phi_gallery.jpg"):
        assert (s["root"] / "sweep" / name).stat().st_size > 1000, name
    for key in ("auc_policy_router", "auc_policy_random", "auc_policy_oracle"):
        assert sweep[key] is not None and np.isfinite(sweep[key])
    assert sweep["auc_policy_oracle"] >= sweep["auc_policy_router"] and sweep["oracle_gain"] == "contribution"


def test_sweep_needs_dynamic_model(self_labelled: dict, tmp_path: Path) -> None:
    plain = save_checkpoint(tmp_path / "plain.pt", build_model("yolov7-tiny", names=NAMES), names=NAMES)
    with pytest.raises(ValueError, match="dynamic"):
        test_script.run(data=self_labelled["data"], weights=str(plain), dy_sweep=True, save_dir=tmp_path,
                        img_size=64, workers=0, device="cpu")


def test_stability_reported_with_a_calibration(self_labelled: dict, tmp_path: Path) -> None:
    from utils.routing.calibration import calibration_record
    s = self_labelled
    calib = calibration_record(np.linspace(0.05, 0.95, 19))
    model, _ = load_checkpoint(s["kw"]["weights"])
    weights = save_checkpoint(tmp_path / "calibrated.pt", model, names=NAMES, thresholds=calib)
    out = test_script.run(data=s["data"], plots=False, save_dir=tmp_path, **{**s["kw"], "weights": str(weights)})
    stab = out["dynamic"]["stability"]
    assert sorted(stab) == [10.0, 30.0, 50.0, 70.0, 90.0]
    assert all(0 <= v <= 100 for v in stab.values())
    assert json.loads((tmp_path / "metrics.json").read_text())["dynamic"]["stability"]


def test_cli_flag_parses() -> None:
    opt = test_script.parse_args(["--weights", "w.pt", "--data", "d.yaml", "--dy-sweep"])
    assert opt.dy_sweep is True
    assert yaml.safe_dump(options_dict(opt))  # plain values only


def test_fast_scoring_equals_full_coco_evaluation() -> None:
    from utils.evaluation.metrics import coco_evaluate
    rng = np.random.default_rng(0)
    data = _data(12)
    data.det1 = [np.concatenate([d, [[*rng.uniform(0, 40, 2), *rng.uniform(40, 64, 2), rng.uniform(), 0]]])
                 for d in data.det1]
    for seed in range(3):
        hard = np.random.default_rng(seed).uniform(size=12) > 0.5
        full = coco_evaluate(data.gts, data.assemble(hard), data.names, image_sizes=data.sizes)
        fast = data.score(hard)
        assert (fast["map"], fast["map50"]) == pytest.approx((full["map"], full["map50"]), abs=1e-12)


def test_auc_policy_is_undefined_when_the_routes_barely_differ() -> None:
    from utils.routing.sweep import format_sweep, run_sweep
    data = _data(20)
    same = SweepData(data.names, data.gts, data.det2, data.det2, data.phi, data.sizes)  # both routes alike
    with pytest.raises(ValueError, match="nothing for routing to gain"):
        policy_auc(router_points(same))
    assert policy_auc(router_points(data)) > 0.5  # a real gap stays defined


def test_format_sweep_says_why_auc_is_undefined(tmp_path: Path) -> None:
    from utils.routing.sweep import format_sweep, run_sweep
    data = _data(20)
    same = SweepData(data.names, data.gts, data.det2, data.det2, data.phi, data.sizes)
    result = run_sweep(same, tmp_path, plots=False)
    assert result["auc_policy_router"] is None and result["auc_policy_random"] is None
    text = format_sweep(result)
    assert "router: undefined" in text and "nothing for routing to gain" in text


def test_run_sweep_adds_the_oracle_and_the_routing_efficiency(tmp_path: Path) -> None:
    from utils.routing.sweep import format_sweep, run_sweep
    data = _data(20)
    noisy = SweepData(data.names, data.gts, data.det1, data.det2,
                      np.where(np.arange(20) % 4 == 0, 1 - data.phi, data.phi), data.sizes)  # φ wrong on 1 in 4
    result = run_sweep(noisy, tmp_path, gflops={"easy": 1.0, "hard": 2.0}, latency={"easy": 5.0, "hard": 9.0})
    assert list(result["points"]) == ["oracle", "router", "random"]
    oracle, router, rand = (result[f"auc_policy_{k}"] for k in ("oracle", "router", "random"))
    assert oracle > router > rand
    assert result["routing_efficiency"] == pytest.approx((router - rand) / (oracle - rand))
    assert 0 < result["routing_efficiency"] < 1
    with open(tmp_path / "sweep.csv", newline="") as f:
        assert [r["policy"] for r in csv.DictReader(f)] == ["oracle"] * 11 + ["router"] * 11 + ["random"] * 11
    assert (tmp_path / "sweep_gflops.png").stat().st_size > 1000
    text = format_sweep(result)
    assert "oracle mAP@.5:.95" in text.splitlines()[0]
    assert f"{result['points']['oracle'][3]['map']:>19.3f}" in text.splitlines()[4]  # 30% hard, last column
    assert (f"router: {router:.3f}, random: {rand:.3f}, oracle: {oracle:.3f}; "
            f"routing efficiency {result['routing_efficiency']:.2f}") in text


def test_format_sweep_says_when_efficiency_is_undefined(tmp_path: Path) -> None:
    from utils.routing.sweep import format_sweep, run_sweep
    data = _data(20)
    same = SweepData(data.names, data.gts, data.det2, data.det2, data.phi, data.sizes)
    result = run_sweep(same, tmp_path, plots=False)
    assert result["auc_policy_oracle"] is None and result["routing_efficiency"] is None
    assert "oracle: undefined; routing efficiency undefined" in format_sweep(result)


def test_auc_policy_is_undefined_when_the_hard_route_is_worse() -> None:
    data = _data(20)
    swapped = SweepData(data.names, data.gts, data.det2, data.det1, data.phi, data.sizes)  # detector 2 misses
    with pytest.raises(ValueError, match="below the easy route on these images"):
        policy_auc(router_points(swapped))
