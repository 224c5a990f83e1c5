"""scripts/compare_routers.py: one table of the sweeps of several dynamic models."""
from __future__ import annotations

from pathlib import Path

import yaml

from models.dualres import DualResModel
from models.resolution_router import ResolutionRouter
from models.yolo import build_model
from tests.conftest import load_script, make_dataset, tiny_checkpoint
from utils.weights.checkpoints import save_checkpoint

NAMES = ["a", "b", "c"]


def _script():
    return load_script("compare_routers")


def test_compares_a_dy_and_a_dualres_model(tmp_path: Path, capsys) -> None:
    images = make_dataset(tmp_path / "data", n=6, nc=3)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"train": str(images), "val": str(images), "nc": 3, "names": NAMES}))
    dy = tiny_checkpoint(tmp_path / "dy.pt")
    model = DualResModel(build_model("yolov7-tiny", names=NAMES), ResolutionRouter("thumb", input_size=64), 0.5)
    dr = save_checkpoint(tmp_path / "dr.pt", model, names=NAMES, img_size=64)
    rows = _script().run(weights=[str(dy), str(dr)], data=str(data), img_size=64, device="cpu", workers=0,
                         project=str(tmp_path / "runs"))
    assert [r["routes"] for r in rows] == ["easy/hard", "low/high"]
    for r in rows:
        assert r["gflops"][0] < r["gflops"][1]  # the cheap route first
        assert {"auc_oracle", "efficiency"} <= set(r)
    table = capsys.readouterr().out
    assert "| `dy.pt` | easy/hard |" in table and "| `dr.pt` | low/high |" in table
    assert "| router - random | AUC-Policy oracle | efficiency | GFLOPs range |" in table
    assert (tmp_path / "runs" / "dr" / "sweep.csv").is_file()


def test_table_shows_the_oracle_and_the_efficiency() -> None:
    row = {"weights": "m.pt", "routes": "easy/hard", "auc_router": 0.585, "auc_random": 0.517, "gain": 0.068,
           "auc_oracle": 0.79, "efficiency": 0.2488, "gflops": (0.52, 0.84), "map": (0.16, 0.244)}
    undefined = {**row, "weights": "n.pt", "auc_oracle": None, "efficiency": None}
    lines = _script().markdown([row, undefined]).splitlines()
    assert lines[2] == "| `m.pt` | easy/hard | 0.585 | 0.517 | +0.068 | 0.790 | 0.25 | 0.52–0.84 | 0.160 / 0.244 |"
    assert "| +0.068 | — | — | 0.52–0.84 |" in lines[3]
