"""scripts/export_accuracy.py and utils.export.accuracy: per-route mAP, φ ranking, dial, sweep of an export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import export
from data.make_demo_data import make_demo_dataset
from tests.conftest import REPO, load_script
from utils.export.accuracy import goals

pytestmark = pytest.mark.long(40)  # the whole file, on 2 cores: scheduled among the first

WEIGHTS = REPO / "weights" / "demo-dy-yolov7-tiny.pt"
SIZE = 128


def _script():
    return load_script("export_accuracy")


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("accuracy")
    data = make_demo_dataset(root / "data", n_train=0, n_val=32, img_size=SIZE, seed=4)
    routed = export.run(weights=WEIGHTS, img_size=[SIZE], dynamic_batch=True, output=str(root / "dy"))["onnx"]
    easy = export.run(weights=WEIGHTS, img_size=[SIZE], route="easy", output=str(root / "e"))["onnx"]
    hard = export.run(weights=WEIGHTS, img_size=[SIZE], route="hard", output=str(root / "h"))["onnx"]
    result = _script().run(weights=str(WEIGHTS), data=str(data), exports=[f"ort={routed}", f"pair={easy}+{hard}"],
                           latency_reps=2, threads=1, out=str(root / "out"))
    return {"result": result, "out": root / "out"}


def test_an_fp32_export_scores_like_the_pt(compared: dict) -> None:
    for name in ("ort", "pair"):
        c = compared["result"]["comparisons"][name]
        assert c["images"] == 32
        for route in ("easy", "hard"):
            assert c["routes"][route]["ref"] > 0.02  # a real score
            assert abs(c["routes"][route]["delta"]) < 1e-3
        assert c["phi"]["spearman"] > 0.999
        assert all(c["goals"][k]["met"] for k in ("map_delta", "spearman", "dial_p50")), c["goals"]
        s = c["sweep"]
        assert s["other"]["auc_policy_router"] == pytest.approx(s["ref"]["auc_policy_router"], abs=0.01)
        assert set(c["latency_ms"][name]) == {"easy", "hard"}


def test_files_written_and_goals_can_fail(compared: dict) -> None:
    saved = json.loads((compared["out"] / "accuracy.json").read_text())
    assert set(saved["comparisons"]) == {"ort", "pair"}
    md = (compared["out"] / "accuracy.md").read_text()
    assert "ort vs pt" in md and "AUC-Policy" in md and "Spearman" in md
    bad = json.loads(json.dumps(compared["result"]["comparisons"]["ort"]))
    bad["routes"]["easy"]["delta"] = -0.02
    bad["phi"]["spearman"] = 0.9
    got = goals(bad)
    assert not got["map_delta"]["met"] and not got["spearman"]["met"]


def test_a_missing_export_is_one_error_line(tmp_path: Path, capsys) -> None:
    code = _script().main(["--weights", str(WEIGHTS), "--data", str(tmp_path / "none.yaml"),
                           "--exports", f"x={tmp_path / 'missing.onnx'}", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ")
