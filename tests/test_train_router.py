"""train_router.py end to end on a tiny generated dataset: freezing, batch independence, resume, errors."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_router
from data.make_demo_data import make_demo_dataset
from models.yolo import build_model
from utils.data.datasets import create_dataloader
from utils.routing.loss import router_objective
from tests.routing.batches import route_batch, to_batch
from utils.routing.dynamicdet_trainer import PooledRouter, RouterTrainer, frozen_mode
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.weights.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint

pytestmark = pytest.mark.long(85)  # the whole file, on 2 cores: scheduled among the first

NAMES = ["circle", "square", "triangle", "cross"]
IMG = 64


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> dict[str, Path]:
    """8 training / 4 validation images and an (untrained) stage-1 checkpoint with non-trivial BN stats."""
    root = tmp_path_factory.mktemp("router")
    data = make_demo_dataset(root / "demo", n_train=8, n_val=4, img_size=IMG, seed=0)
    torch.manual_seed(0)
    model = build_model("dy-yolov7-tiny", names=NAMES)
    with torch.no_grad():
        model.train()(torch.rand(4, 3, IMG, IMG))  # BN running statistics away from their init
    plain = build_model("yolov7-tiny", names=NAMES)
    return {"data": data, "weights": save_checkpoint(root / "stage1.pt", model, names=NAMES),
            "plain": save_checkpoint(root / "plain.pt", plain, names=NAMES)}


def _run(stage1: dict, tmp_path: Path, name: str, **kw) -> dict:
    opts = dict(weights=str(stage1["weights"]), data=str(stage1["data"]), img_size=IMG, epochs=1, batch_size=4,
                workers=0, device="cpu", project=str(tmp_path), name=name, lr=1e-3)
    return train_router.run(**{**opts, **kw})


def _epochs_logged(run_dir: Path) -> list[int]:
    return [int(float(r["epoch"])) for r in csv.DictReader(open(run_dir / "results.csv"))]


def test_per_image_losses_do_not_depend_on_the_batch(stage1: dict) -> None:
    model, _ = load_checkpoint(stage1["weights"])
    frozen_mode(model)
    from utils.data.config import hyp_for, load_data_config
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp_for(model), model.heads[0].nl, model.nc, IMG))
    loader, _ = create_dataloader(load_data_config(stage1["data"]).train, IMG, 8, 32, workers=0)
    imgs, targets = to_batch(*next(iter(loader))[:2], torch.device("cpu"))
    router = PooledRouter(model.router)
    batch = route_batch(model, router, imgs, targets, compute_loss)
    singles = []
    for i in range(len(imgs)):
        t = targets[targets[:, 0] == i].clone()
        t[:, 0] = 0
        singles.append(route_batch(model, router, imgs[i:i + 1], t, compute_loss))
    for k in ("phi", "l1", "l2"):
        torch.testing.assert_close(getattr(batch, k), torch.cat([getattr(s, k) for s in singles]), rtol=1e-4, atol=1e-5)
    delta = 0.01
    whole = router_objective("adaptive", batch.phi, batch.l1, batch.l2, delta)
    mean_single = torch.stack([router_objective("adaptive", s.phi, s.l1, s.l2, delta) for s in singles]).mean()
    torch.testing.assert_close(whole, mean_single, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", ["adaptive", "random", "ap"])
def test_only_the_router_learns(strategy: str, stage1: dict, tmp_path: Path) -> None:
    before = read_checkpoint(stage1["weights"])["model"]
    out = _run(stage1, tmp_path, strategy, strategy=strategy)
    ckpt = read_checkpoint(out["last"])
    after = ckpt["model"]
    assert set(after) == set(before)
    frozen = [k for k in before if not k.startswith("router.")]
    changed = [k for k in frozen if not torch.equal(before[k], after[k])]
    assert not changed, changed[:5]  # detectors and every BN statistic bit-identical
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("router."))
    table = ckpt["thresholds"]["table"]
    assert len(table) == 101 and table[0] == 1.0 and table[100] == 0.0
    assert ckpt["thresholds"]["n_images"] == 4 and ckpt["meta"]["strategy"] == strategy
    costs = ckpt["thresholds"]
    # measured on this machine: positive, but their order depends on the machine's load
    assert all(0 < costs["latency_ms"][r] < math.inf for r in ("easy", "hard"))
    assert 0 < costs["gflops"]["easy"] < costs["gflops"]["hard"]
    assert ckpt["delta"] == pytest.approx(out["delta"]) and ckpt["optimizer"]["state"]
    assert out["best"].is_file() and read_checkpoint(out["best"])["thresholds"]["table"] == table
    assert _epochs_logged(out["save_dir"]) == [0]


def test_resume_an_interrupted_run(stage1: dict, tmp_path: Path, monkeypatch) -> None:
    original = RouterTrainer.end_epoch

    def end_then_die(self, *args):
        original(self, *args)
        raise KeyboardInterrupt  # killed right after saving epoch 0
    monkeypatch.setattr(RouterTrainer, "end_epoch", end_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(stage1, tmp_path, "killed", epochs=2)
    monkeypatch.setattr(RouterTrainer, "end_epoch", original)
    last = tmp_path / "killed" / "weights" / "last.pt"
    first = read_checkpoint(last)
    assert first["epoch"] == 0

    def no_new_offset(*args, **kwargs):
        raise AssertionError("a resumed run reuses the stored Δ")
    monkeypatch.setattr(train_router, "estimate_offset", no_new_offset)
    out = train_router.run(resume=str(last))
    ckpt = read_checkpoint(last)
    assert ckpt["epoch"] == 1 and ckpt["delta"] == first["delta"] == out["delta"]
    assert ckpt["optimizer"]["state"][0]["step"] > first["optimizer"]["state"][0]["step"]
    assert _epochs_logged(tmp_path / "killed") == [0, 1]
    with pytest.raises(ValueError, match="already finished"):
        train_router.run(resume=str(last))


def test_clear_errors(stage1: dict, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="non-dynamic"):
        _run(stage1, tmp_path, "plain", weights=str(stage1["plain"]))
    with pytest.raises(FileNotFoundError, match="not found"):
        _run(stage1, tmp_path, "missing", weights=str(tmp_path / "none.pt"))
    code = train_router.main(["--weights", str(tmp_path / "none.pt"), "--data", str(stage1["data"]),
                              "--project", str(tmp_path)])
    assert code == 1 and "none.pt not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown options"):
        train_router.run(bogus=1)


def test_calibrate_only_writes_a_new_checkpoint(stage1: dict, tmp_path: Path) -> None:
    before = stage1["weights"].read_bytes()
    out = _run(stage1, tmp_path, "calib", calibrate=True)
    assert stage1["weights"].read_bytes() == before  # the input is never modified
    ckpt = read_checkpoint(out["calibrated"])
    calib = ckpt["thresholds"]
    assert calib["n_images"] == 4 and calib["img_size"] == IMG and len(calib["table"]) == 101
    assert set(calib["latency_ms"]) == {"easy", "hard"} and calib["gflops"]["hard"] > calib["gflops"]["easy"]
    model, _ = load_checkpoint(out["calibrated"])
    from utils.routing.calibration import resolve_threshold
    thr, _ = resolve_threshold(None, calib, target_latency=calib["latency_ms"]["hard"] + 1)
    assert thr == 0.0  # a budget above the hard route: every image hard
    with pytest.raises(ValueError, match="below the easy route"):
        resolve_threshold(None, calib, target_latency=calib["latency_ms"]["easy"] / 2)


def test_stability_on_the_calibration_images_says_so(stage1: dict, tmp_path: Path, capsys) -> None:
    import test as test_script
    out = _run(stage1, tmp_path, "calib", calibrate=True)
    assert out["thresholds"]["images_digest"]
    kw = dict(weights=str(out["calibrated"]), img_size=IMG, workers=0, plots=False, project=str(tmp_path))
    same = test_script.run(data=str(stage1["data"]), name="same", **kw)
    assert "these are the images the dial was calibrated on" in capsys.readouterr().out
    assert "stability" not in same["dynamic"]
    other = make_demo_dataset(tmp_path / "other", n_train=2, n_val=4, img_size=IMG, seed=7)
    held_out = test_script.run(data=str(other), name="other", **kw)
    assert "Threshold stability (calibrated hard % -> hard % on these images)" in capsys.readouterr().out
    assert set(held_out["dynamic"]["stability"]) == {10, 30, 50, 70, 90}


def test_two_process_router_training_with_torchrun(stage1: dict, tmp_path: Path) -> None:
    repo = Path(train_router.__file__).resolve().parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_router.py",
           "--weights", str(stage1["weights"]), "--data", str(stage1["data"]), "--img-size", str(IMG),
           "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--project", str(tmp_path),
           "--name", "ddp", "--lr", "1e-3"]
    res = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"], "both ranks must share one run directory"
    ckpt = read_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")
    before = read_checkpoint(stage1["weights"])["model"]
    assert any(not torch.equal(before[k], ckpt["model"][k]) for k in before if k.startswith("router."))
    assert all(torch.equal(before[k], ckpt["model"][k]) for k in before if not k.startswith("router."))
    assert _epochs_logged(tmp_path / "ddp") == [0]


# ---- DualRes: --router dualres ---------------------------------------------------------------------
def _dualres(stage1: dict, tmp_path: Path, name: str, **kw) -> dict:
    return _run(stage1, tmp_path, name, **{"router": "dualres", "weights": str(stage1["plain"]), "lr": 3e-2,
                                           "epochs": 2, **kw})


def test_dualres_router_trains_around_a_frozen_plain_detector(stage1: dict, tmp_path: Path) -> None:
    from models.dualres import DualResModel
    before = read_checkpoint(stage1["plain"])["model"]
    out = _dualres(stage1, tmp_path, "dr")
    model, info = load_checkpoint(out["last"])
    assert isinstance(model, DualResModel) and model.scale == 0.5 and model.router.kind == "thumb"
    state = read_checkpoint(out["last"])["model"]
    assert all(torch.equal(state[f"detector.{k}"], v) for k, v in before.items())  # weights and BN stats
    calib = info["thresholds"]
    assert len(calib["table"]) == 101 and calib["gflops"]["easy"] < calib["gflops"]["hard"]
    assert info["img_size"] == IMG and _epochs_logged(out["save_dir"]) == [0, 1]
    opts = info["extra"]["train_opt"]
    assert opts["router"] == "dualres" and opts["epochs"] == 2 and opts["weight_decay"] == pytest.approx(3.6e-4)


def test_dualres_resume_continues_to_the_same_state(stage1: dict, tmp_path: Path, monkeypatch) -> None:
    from utils.routing.dualres_trainer import DualResTrainer
    straight = _dualres(stage1, tmp_path, "straight", epochs=3)
    original = DualResTrainer.end_epoch

    def end_then_die(self, epoch, *args):
        out = original(self, epoch, *args)
        if epoch == 0:
            raise KeyboardInterrupt  # killed right after saving epoch 0
        return out
    monkeypatch.setattr(DualResTrainer, "end_epoch", end_then_die)
    with pytest.raises(KeyboardInterrupt):
        _dualres(stage1, tmp_path, "killed", epochs=3)
    monkeypatch.setattr(DualResTrainer, "end_epoch", original)
    resumed = train_router.run(resume=str(tmp_path / "killed" / "weights" / "last.pt"))
    a, b = (read_checkpoint(r["last"]) for r in (straight, resumed))
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, msg=k)
    assert _epochs_logged(tmp_path / "killed") == [0, 1, 2]


def test_router_from_attaches_a_trained_router_without_training(stage1: dict, tmp_path: Path) -> None:
    trained = _dualres(stage1, tmp_path, "src")
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other.pt", build_model("yolov7-tiny", names=NAMES), names=NAMES)
    out = _run(stage1, tmp_path, "attached", router="dualres", weights=str(other), router_from=str(trained["last"]))
    model, info = load_checkpoint(out["calibrated"])
    src, _ = load_checkpoint(trained["last"])
    for k, v in src.router.state_dict().items():
        assert torch.equal(model.router.state_dict()[k], v), k
    for k, v in read_checkpoint(other)["model"].items():
        assert torch.equal(read_checkpoint(out["calibrated"])["model"][f"detector.{k}"], v), k
    assert info["meta"]["router_from"] == str(trained["last"]) and len(info["thresholds"]["table"]) == 101
    with pytest.raises(ValueError, match="not a DualRes checkpoint"):
        _run(stage1, tmp_path, "bad", router="dualres", weights=str(other), router_from=str(other))


def test_dynamicdet_router_on_a_plain_model_points_to_dualres(stage1: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--router dualres"):
        _run(stage1, tmp_path, "plain", weights=str(stage1["plain"]))


def test_one_progress_bar_counts_the_router_epochs(stage1: dict, tmp_path: Path, capsys) -> None:
    _run(stage1, tmp_path, "bar", epochs=3)
    err = capsys.readouterr().err.replace("\r", "\n")
    bars = [line for line in err.splitlines() if line.startswith("router:")]
    assert bars and "3/3" in bars[-1] and "100%" in bars[-1] and "loss=" in bars[-1], bars[-3:]


def test_dualres_around_a_dy_model_takes_its_inner_threshold_as_pk(stage1: dict, tmp_path: Path) -> None:
    import numpy as np
    from utils.routing.calibration import calibration_record, table_threshold
    model, _ = load_checkpoint(stage1["weights"])
    calib = calibration_record(np.linspace(0.1, 0.9, 17))
    dy = save_checkpoint(tmp_path / "dy-calibrated.pt", model, names=NAMES, img_size=IMG, thresholds=calib)
    out = _run(stage1, tmp_path, "inner", router="dualres", weights=str(dy), inner_threshold="p50", lr=3e-2)
    dualres, _ = load_checkpoint(out["last"])
    assert dualres.inner_threshold == pytest.approx(table_threshold(calib["table"], 50))
    with pytest.raises(ValueError, match="not understood"):
        _run(stage1, tmp_path, "bad", router="dualres", weights=str(dy), inner_threshold="half")


def test_default_schedule_counts_steps_and_stops_early(stage1: dict, tmp_path: Path, caplog) -> None:
    """Without --epochs: --steps optimizer steps in epochs of at least 4,000 samples (8 images: 500
    passes), stopping once the validation routed loss has not improved for --patience epochs."""
    import logging
    with caplog.at_level(logging.INFO):
        out = train_router.run(weights=str(stage1["weights"]), data=str(stage1["data"]), img_size=IMG, workers=0,
                               device="cpu", project=str(tmp_path), name="steps", steps=2000, patience=1, lr=0.0)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("router schedule: 2000 optimizer steps of 8 samples = 4 epochs") for m in messages)
    assert _epochs_logged(out["save_dir"]) == [0, 1]  # lr 0: epoch 2 is no better than epoch 1, so it stops
    assert any(m.startswith("stopped after epoch 2: no better validation routed loss for 1 epochs") for m in messages)
    opts = read_checkpoint(out["last"])["train_opt"]
    assert opts["epochs"] == 4 and opts["epoch_samples"] == 4000  # kept for --resume
    moved = [m for m in messages if "the router's weights barely moved" in m]
    assert len(moved) == 1 and "raise --lr or --steps" in moved[0]


def test_a_router_that_learns_says_nothing_about_moving(stage1: dict, tmp_path: Path, caplog) -> None:
    import logging
    with caplog.at_level(logging.WARNING):
        _run(stage1, tmp_path, "moves", epochs=2, lr=1e-2)
    assert not [r for r in caplog.records if "barely moved" in r.getMessage()]


def test_router_on_the_detectors_own_images_warns_and_a_router_split_does_not(stage1: dict, tmp_path: Path,
                                                                               caplog) -> None:
    import logging

    import yaml

    from utils.data.config import find_images, load_data_config
    from utils.data.image_set import image_set_record
    data = load_data_config(stage1["data"])
    model, _ = load_checkpoint(stage1["weights"])
    trained = save_checkpoint(tmp_path / "trained.pt", model, names=NAMES,
                              meta={"trained_on": image_set_record(find_images(data.train))})
    with caplog.at_level(logging.WARNING):
        out = _run(stage1, tmp_path, "own", weights=str(trained))
    seen = [r.getMessage() for r in caplog.records if "the detectors were trained on" in r.getMessage()]
    assert len(seen) == 1 and "100% of the router's training images (train split of" in seen[0]
    meta = read_checkpoint(out["best"])["meta"]
    assert meta["trained_on"]["n"] == 8 and meta["router_trained_on"]["n"] == 8  # carried for later stages
    held = make_demo_dataset(tmp_path / "held", n_train=0, n_val=6, img_size=IMG, seed=7)
    spec = yaml.safe_load(Path(stage1["data"]).read_text())
    spec["router"] = str(load_data_config(held, require=("val",)).val[0])
    with_router = tmp_path / "with_router.yaml"
    with_router.write_text(yaml.safe_dump({**spec, "path": str(data.path)}))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        out = _run(stage1, tmp_path, "held", weights=str(trained), data=str(with_router))
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "the detectors were trained on" in m]
    assert any(m.startswith("router training images: the router split of") and "(6 images)" in m for m in messages)
    assert read_checkpoint(out["best"])["meta"]["router_trained_on"]["n"] == 6


def test_a_saturated_router_is_named_at_calibration(stage1: dict, tmp_path: Path, caplog) -> None:
    import logging
    model, _ = load_checkpoint(stage1["weights"])
    with torch.no_grad():
        model.router.layer2.bias.fill_(40.0)  # φ = 1 for every image
    saturated = save_checkpoint(tmp_path / "saturated.pt", model, names=NAMES)
    with caplog.at_level(logging.WARNING):
        _run(stage1, tmp_path, "calib", weights=str(saturated), calibrate=True)
    lines = [r.getMessage() for r in caplog.records if "φ has saturated" in r.getMessage()]
    assert len(lines) == 1 and "100% above 0.999" in lines[0]
