"""Training learns: mAP of a plain and of a dynamic model rises far above an untrained model's.

The longest tests of the suite (tens of seconds each), in a file of their own so that parallel
workers (pytest-xdist, one file per worker at a time) run them beside the rest.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import test as test_script
import train
from models.yolo import build_model
from tests.test_train import demo  # noqa: F401  (the module's data set fixture)
from utils.weights.checkpoints import read_checkpoint, save_checkpoint


def _map50_before(cfg: str, demo: dict, tmp_path: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg, names=["circle", "square", "triangle", "cross"])
    weights = save_checkpoint(tmp_path / "untrained.pt", model, names=model.names)
    return test_script.run(data=demo["fit"], weights=str(weights), img_size=128, batch_size=8, workers=0,
                           device="cpu", plots=False, save_dir=tmp_path / "before")


@pytest.mark.long(90)
@pytest.mark.parametrize("cfg,epochs", [("yolov7-tiny", 30), ("dy-yolov7-tiny", 40)])
def test_training_raises_map(cfg: str, epochs: int, demo: dict, tmp_path: Path) -> None:
    before = _map50_before(cfg, demo, tmp_path)
    out = train.run(cfg=cfg, data=str(demo["fit"]), hyp=str(demo["hyp"]), img_size=128, epochs=epochs,
                    batch_size=8, workers=0, device="cpu", project=str(tmp_path), name="run", noval=True,
                    plots=False)
    after = out["metrics"]
    # Floors far above an untrained model (mAP@.5 ~3e-4) yet below the spread of what training
    # reaches: training is not bit-reproducible across CPUs and thread schedules, and on an AMD
    # EPYC the same run gave 0.016-0.029 (plain) and 0.0097+ (Dy detector 2) over repeats.
    if cfg.startswith("dy-"):  # both detectors learn (stage 1 trains them jointly)
        for det in ("detector1", "detector2"):
            b, a = before["dynamic"][det]["map50"], after["dynamic"][det]["map50"]
            assert a >= max(0.005, 10 * b), (det, b, a)
    else:
        assert after["map50"] >= max(0.01, 10 * before["map50"]), (before["map50"], after["map50"])
    run_dir = out["save_dir"]
    for name in ("weights/last.pt", "weights/best.pt", "results.csv", "hyp.yaml", "opt.yaml"):
        assert (run_dir / name).is_file(), name
    ckpt = read_checkpoint(run_dir / "weights" / "last.pt")
    assert ckpt["format"] == "dydet-v1" and ckpt["epoch"] == epochs - 1 and "optimizer" in ckpt
    assert ckpt["img_size"] == 128 and read_checkpoint(run_dir / "weights" / "best.pt")["img_size"] == 128
