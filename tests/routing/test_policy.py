"""utils/routing/policy.py: one threshold choice for every entry point; a latency target uses the
routes' latency on this machine (measured once, cached, re-measurable), never the calibrating
machine's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import export
import test as test_script
from dydet import DyDet
from tests.conftest import make_dataset, tiny_checkpoint
from utils.runtime.onnx_model import OnnxModel
from utils.routing import policy
from utils.routing.calibration import calibration_record

SIZE = 64
STORED = {"easy_ms": 17.5, "hard_ms": 27.4}  # what the calibrating machine measured


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policy")
    phi = np.linspace(0.05, 0.95, 19)
    return {"no_latency": tiny_checkpoint(root / "no-latency.pt", thresholds=calibration_record(phi)),
            "stored": tiny_checkpoint(root / "stored.pt", thresholds=calibration_record(phi, **STORED)),
            "root": root}


@pytest.fixture
def timed(monkeypatch, fresh_cache) -> list:
    """route_latency faked: easy 30 ms, hard 60 ms on 'this machine'; returns the calls made."""
    calls = []

    def fake(model, img_size):
        calls.append(img_size)
        return {"easy": 30.0, "hard": 60.0}
    monkeypatch.setattr(policy, "route_latency", fake)
    return calls


def test_latency_is_measured_once_then_cached_and_remeasured_on_request(checkpoints, timed, caplog) -> None:
    model = DyDet(checkpoints["stored"], device="cpu")
    first, how = policy.machine_latency(model.model, model.info, SIZE)
    assert first == {"easy": 30.0, "hard": 60.0} and "measured now on this machine" in how and timed == [SIZE]
    again, how = policy.machine_latency(model.model, model.info, SIZE)
    assert again == first and "cached in" in how and timed == [SIZE]  # not measured again
    policy.machine_latency(model.model, model.info, SIZE, remeasure=True)
    policy.machine_latency(model.model, model.info, 2 * SIZE)  # another input size: another entry
    policy.machine_latency(model.model, model.info, SIZE, precision="bf16 autocast")  # another precision
    assert timed == [SIZE, SIZE, 2 * SIZE, SIZE]
    cache = json.loads((policy.user_cache_dir() / policy.CACHE_FILE).read_text())
    assert len(cache) == 3 and all(" px | " in k and "pytorch" in k for k in cache)


def test_an_unwritable_cache_still_measures(checkpoints, timed, tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    model = DyDet(checkpoints["stored"], device="cpu")
    ms, _ = policy.machine_latency(model.model, model.info, SIZE, cache_dir=blocked / "sub")
    assert ms["easy"] == 30.0


def test_the_api_uses_this_machines_latency_not_the_stored_one(checkpoints, timed) -> None:
    for key in ("no_latency", "stored"):  # the stored 17.5 / 27.4 ms play no part
        det = DyDet(checkpoints[key], device="cpu")
        how = det.set_threshold(target_latency=45.0, img_size=SIZE)
        assert det.threshold == pytest.approx(0.5, abs=0.06) and "easy 30, hard 60 ms" in how, how
    det.set_threshold(target_latency=45.0, img_size=SIZE, remeasure=True)
    assert len(timed) == 3  # one measurement per model, and the one asked for


def test_test_py_and_export_py_choose_the_same_threshold(checkpoints, timed, tmp_path) -> None:
    images = make_dataset(tmp_path / "data", n=4, nc=3)
    data = tmp_path / "data.yaml"
    data.write_text(f"train: {images}\nval: {images}\nnc: 3\nnames: [a, b, c]\n")
    weights = checkpoints["no_latency"]
    metrics = test_script.run(weights=str(weights), data=str(data), img_size=SIZE, target_latency=45.0, workers=0,
                              plots=False, project=str(tmp_path), name="t")
    api = DyDet(weights, device="cpu")
    api.set_threshold(target_latency=45.0, img_size=SIZE)
    assert metrics["dynamic"]["threshold"] == pytest.approx(api.threshold)
    out = export.run(weights=str(weights), img_size=SIZE, target_latency=45.0, output=str(tmp_path / "dy"))
    assert out["threshold"] == pytest.approx(api.threshold) and not out["options"].thres_input  # built in
    for kw in ({"target_gflops": 1.0, "route": "easy"}, {"target_latency": 45.0, "route": "hard"}):
        with pytest.raises(ValueError, match="apply to a dynamic model exported with --route both"):
            export.run(weights=str(weights), img_size=SIZE, output=str(tmp_path / "x"), **kw)


def test_gflops_targets_and_plain_models(checkpoints, caplog) -> None:
    det = DyDet(checkpoints["no_latency"], device="cpu")
    gflops = policy.route_gflops_of(det.model, SIZE)
    how = det.set_threshold(target_gflops=(gflops["easy"] + gflops["hard"]) / 2, img_size=SIZE)
    assert det.threshold == pytest.approx(0.5, abs=0.06) and "GFLOPs" in how
    plain = tiny_checkpoint(checkpoints["root"] / "plain.pt", cfg="yolov7-tiny")
    model = DyDet(plain, device="cpu")
    assert policy.choose_threshold(model.model, model.info, SIZE, dy_thres="p30") == (None, "plain model (no routing)")
    assert "plain model: the routing request is ignored" in caplog.text
    with pytest.raises(ValueError, match="give one way"):
        det.set_threshold("p30", target_latency=10.0)


def test_exports_are_timed_through_their_runtime(checkpoints, fresh_cache, tmp_path) -> None:
    weights = checkpoints["no_latency"]
    free = OnnxModel(export.run(weights=str(weights), img_size=SIZE, output=str(tmp_path / "free"))["onnx"])
    ms, how = policy.machine_latency(free, free.info, SIZE)
    assert ms["easy"] > 0 and ms["hard"] > 0 and "measured now" in how
    assert "| onnx fp32 |" in policy.latency_key(free, free.info, SIZE)
    baked = OnnxModel(export.run(weights=str(weights), img_size=SIZE, dy_thres=0.5,
                                 output=str(tmp_path / "baked"))["onnx"])
    with pytest.raises(ValueError, match="threshold built in.*--thres-input"):
        policy.machine_latency(baked, baked.info, SIZE)
    with torch.no_grad():
        assert free(torch.rand(1, 3, SIZE, SIZE), threshold=0.0).hard.all()
