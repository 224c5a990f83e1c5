"""train.py / test.py end to end on a small generated dataset: learning, resume, DDP, errors."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import test as test_script
import train
from data.make_demo_data import make_demo_dataset
from models.yolo import build_model
from tests.conftest import REPO
from utils.weights.checkpoints import read_checkpoint, save_checkpoint

pytestmark = pytest.mark.long(90)  # the whole file, on 2 cores: scheduled among the first

# A short, easy recipe: no mosaic/mixup/colour jitter, constant LR, one optimizer step per batch.
FAST_HYP = {"lr0": 0.02, "lrf": 1.0, "warmup_epochs": 0.5, "mosaic": 0.0, "mixup": 0.0, "hsv_h": 0.0,
            "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.2, "scale": 0.25, "fliplr": 0.5, "nbs": 8}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """32 easier training images; 'fit.yaml' validates on the training images (a learning check)."""
    root = tmp_path_factory.mktemp("demo")
    data = make_demo_dataset(root, n_train=32, n_val=8, img_size=128, seed=0, max_difficulty=0.3)
    content = yaml.safe_load(data.read_text())
    fit = root / "fit.yaml"
    fit.write_text(yaml.safe_dump({**content, "val": content["train"]}))
    hyp = yaml.safe_load((REPO / "data" / "hyp.scratch.tiny.yaml").read_text())
    hyp_file = root / "hyp.yaml"
    hyp_file.write_text(yaml.safe_dump({**hyp, **FAST_HYP}))
    return {"data": data, "fit": fit, "hyp": hyp_file, "root": root}


def test_plots_and_event_files(demo: dict, tmp_path: Path, capsys, caplog) -> None:
    import logging
    with caplog.at_level(logging.INFO, logger="dydet.train"):
        out = train.run(cfg="yolov7-tiny", data=str(demo["data"]), hyp=str(demo["hyp"]), img_size=128, epochs=2,
                        batch_size=8, workers=0, device="cpu", project=str(tmp_path), name="plots")
    logged = [r.getMessage() for r in caplog.records]
    assert logged[0] == f"run folder: {tmp_path / 'plots'}" and logged[1].startswith("yolov7-tiny: ")
    assert [line.split()[0] for line in logged if line.split()[0] in ("epoch", "1/2", "2/2")] == ["epoch", "1/2", "2/2"]
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("circle", "square", "triangle", "cross"))  # the final per-class table
    d = out["save_dir"]
    for name in ("results.png", "labels.jpg", "train_batch0.jpg", "PR_curve.png", "confusion_matrix.png",
                 "test_batch0_labels.jpg", "test_batch0_pred.jpg"):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    assert list(d.glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert "metrics/map50" in rows[0] and "train/total" in rows[0]
    assert all(float(r["val/total"]) > 0 for r in rows)  # validation losses every epoch


def _epochs_logged(run_dir: Path) -> list[int]:
    path = run_dir / "results.csv"
    if not path.exists():
        return []
    return [int(float(r["epoch"])) for r in csv.DictReader(open(path))]


def test_two_process_training_with_torchrun(demo: dict, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--cfg", "yolov7-tiny", "--data", str(demo["data"]), "--hyp", str(demo["hyp"]), "--img-size", "96",
           "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp_path),
           "--name", "ddp", "--no-plots"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"], "both ranks must share one run directory"
    ckpt = read_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["train_opt"]["batch_size"] == 8
    assert _epochs_logged(tmp_path / "ddp") == [0]


def test_transfer_to_another_class_count(demo: dict, tmp_path: Path) -> None:
    src = train.run(cfg="yolov7-tiny", data=str(demo["data"]), hyp=str(demo["hyp"]), img_size=96, epochs=1,
                    batch_size=8, workers=0, device="cpu", project=str(tmp_path), name="src", noval=True, plots=False)
    two = demo["root"] / "two.yaml"
    content = yaml.safe_load(demo["data"].read_text())
    two.write_text(yaml.safe_dump({**content, "names": {0: "round", 1: "square", 2: "tri", 3: "x", 4: "extra"}}))
    out = train.run(weights=str(src["last"]), data=str(two), hyp=str(demo["hyp"]), img_size=96, epochs=1,
                    batch_size=8, workers=0, device="cpu", project=str(tmp_path), name="dst", noval=True, plots=False)
    ckpt = read_checkpoint(out["last"])
    assert ckpt["cfg"]["nc"] == 5 and ckpt["names"][-1] == "extra"


def test_cli_errors_are_one_clear_line(demo: dict, tmp_path: Path, capsys) -> None:
    cases = [
        (["--data", str(demo["data"])], "--cfg"),
        (["--cfg", "nope", "--data", str(demo["data"])], "not found"),
        (["--resume", str(tmp_path / "none.pt")], "not found"),
        (["--cfg", "yolov7-tiny", "--weights", str(tmp_path / "w.pt"), "--data", str(demo["data"])], "w.pt"),
        (["--cfg", "yolov7-tiny"], "give --data: a data YAML"),
        (["--weights", str(tmp_path / "best.onnx"), "--data", str(demo["data"])], "an export, which cannot be trained"),
        (["--cfg", "yolov7-tiny", "--data", str(tmp_path / "missing.yaml")], "data config not found"),
    ]
    project = tmp_path / "runs"
    for args, message in cases:  # main() as the script runs it, in this process
        assert train.main([*args, "--project", str(project)]) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (args, err)
    assert not project.exists() or not list(project.iterdir()), "a failed start left a run folder"
    # and once as a real process: exit code and no traceback
    res = subprocess.run([sys.executable, "train.py", "--cfg", "yolov7-tiny", "--data", str(tmp_path / "missing.yaml"),
                          "--project", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "data config not found" in res.stderr, res.stderr[-500:]
    assert "Traceback" not in res.stderr, res.stderr[-1500:]


def test_test_py_reports_dynamic_routing(demo: dict, tmp_path: Path) -> None:
    model = build_model("dy-yolov7-tiny", names=["circle", "square", "triangle", "cross"])
    w = save_checkpoint(tmp_path / "dy.pt", model, names=model.names)
    res = subprocess.run([sys.executable, "test.py", "--weights", str(w), "--data", str(demo["data"]), "--img-size",
                          "96", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--dy-thres", "0.0",
                          "--project", str(tmp_path), "--name", "t", "--verbose", "--save-json"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Routing: 0 easy, 8 hard" in res.stdout and "detector1" in res.stdout
    assert "Speed:" in res.stdout and "ms inference" in res.stdout
    assert (tmp_path / "t" / "predictions.json").is_file() and (tmp_path / "t" / "metrics.json").is_file()


def test_yolov7_release_warm_starts_a_dynamic_model(demo: dict, tmp_path: Path) -> None:
    from tests.weights.test_safe_pickle import fake_state, manifest, save_fake_yolov7
    official = fake_state(manifest("yolov7-tiny"))  # an 80-class COCO file, as released
    weights = save_fake_yolov7(tmp_path / "yolov7-tiny.pt", official)
    out = train.run(cfg="dy-yolov7-tiny", weights=str(weights), data=str(demo["data"]), hyp=str(demo["hyp"]),
                    img_size=96, epochs=1, batch_size=8, workers=0, device="cpu", project=str(tmp_path),
                    name="warm", noval=True, plots=False)
    ckpt = read_checkpoint(out["last"])
    assert ckpt["cfg"]["name"] == "dy-yolov7-tiny" and ckpt["cfg"]["nc"] == 4
    src = official["model.0.conv.weight"].float().flatten()
    for key in ("model_b.0.conv.weight", "model_b2.4.conv.weight"):  # both backbones start from the release
        got = ckpt["train_model"][key].flatten()
        assert torch.corrcoef(torch.stack([src, got]))[0, 1] > 0.9, key


def test_test_py_dial_forms(demo: dict, tmp_path: Path) -> None:
    from utils.data.config import load_data_config
    from utils.data.datasets import create_dataloader
    from utils.routing.calibration import calibration_record
    torch.manual_seed(0)
    model = build_model("dy-yolov7-tiny", names=["circle", "square", "triangle", "cross"]).eval()
    with torch.no_grad():
        model.router.layer2.weight.mul_(200.0)  # spread φ over (0, 1)
    loader, _ = create_dataloader(load_data_config(demo["data"]).val, 96, 4, 32, rect=True, pad=0.0, workers=0)  # as test.py
    with torch.no_grad():
        phi = torch.cat([model.difficulty(imgs.float() / 255) for imgs, *_ in loader])
    calibrated = save_checkpoint(tmp_path / "cal.pt", model, names=model.names,
                                 thresholds=calibration_record(phi.numpy()))
    kw = dict(data=demo["data"], img_size=96, batch_size=4, workers=0, plots=False, project=tmp_path)
    for spec, hard in (("p50", 4), ("p100", 8), ("p0", 0), ("1.0", 0)):
        assert test_script.run(weights=calibrated, dy_thres=spec, name=spec, **kw)["dynamic"]["hard"] == hard
    plain = save_checkpoint(tmp_path / "plain.pt", model, names=model.names)
    with pytest.raises(ValueError, match="no routing calibration"):
        test_script.run(weights=plain, dy_thres="p30", name="nocal", **kw)
    with pytest.raises(ValueError):
        test_script.run(weights=plain, dy_thres="fast", name="bad", **kw)


def test_remaining_flags_in_one_short_run(demo: dict, tmp_path: Path) -> None:
    out = train.run(cfg="dy-yolov7-tiny", data=str(demo["data"]), hyp=str(demo["hyp"]), img_size=64, epochs=2,
                    batch_size=8, workers=0, device="cpu", project=str(tmp_path), name="flags", plots=False,
                    cache="ram", single_cls=True, freeze=3, adam=True, save_period=1, sync_bn=True)
    d = out["save_dir"] / "weights"
    assert (d / "epoch0.pt").is_file() and (d / "epoch1.pt").is_file()
    ckpt = read_checkpoint(d / "last.pt")
    assert ckpt["names"] == ["item"] and ckpt["cfg"]["nc"] == 1
    assert ckpt["optimizer"]["param_groups"][0].get("betas") is not None  # AdamW
    torch.manual_seed(0)  # train.run seeds with --seed 0 right before building the model
    first = build_model("dy-yolov7-tiny", nc=1).state_dict()
    for key in ("model_b.0.conv.weight", "model_b2.4.conv.weight", "router.layer1.weight"):
        # frozen layers and the stage-1 router keep their initial values (seeded build)
        torch.testing.assert_close(ckpt["train_model"][key], first[key])
    assert not torch.equal(ckpt["train_model"]["model_b.5.conv.weight"], first["model_b.5.conv.weight"])


def test_freeze_detector1_adds_a_hard_route_and_keeps_the_easy_one(demo: dict, tmp_path: Path) -> None:
    from utils.weights.checkpoints import load_checkpoint
    torch.manual_seed(0)
    plain = build_model("yolov7-tiny", names=["circle", "square", "triangle", "cross"])
    with torch.no_grad():
        plain.train()(torch.rand(4, 3, 64, 64))  # BN statistics a frozen detector must keep
    weights = save_checkpoint(tmp_path / "plain.pt", plain, names=plain.names)
    start = load_checkpoint(weights, cfg="dy-yolov7-tiny")[0].state_dict()
    out = train.run(cfg="dy-yolov7-tiny", weights=str(weights), data=str(demo["data"]), hyp=str(demo["hyp"]),
                    img_size=64, epochs=2, batch_size=8, workers=0, device="cpu", project=str(tmp_path),
                    name="d1", noval=True, plots=False, freeze_detector1=True)
    rows = list(csv.DictReader(open(out["save_dir"] / "results.csv")))
    assert len(rows) == 2 and all(None not in r for r in rows)  # --noval: the final row has the header's columns
    assert rows[0]["metrics/detector2_map"] == "nan" and float(rows[1]["metrics/detector2_map"]) >= 0
    ckpt = read_checkpoint(out["last"])
    for entry in ("model", "train_model"):  # the EMA weights and the raw ones
        state = ckpt[entry]
        det1 = [k for k in start if k.startswith(("model_b.", "model_h."))]
        changed = [k for k in det1 if not torch.equal(state[k].float(), start[k].float())]
        assert not changed, (entry, changed[:5])  # weights and BN statistics bit-identical
        det2 = [k for k in start if k.startswith(("model_b2.", "model_h2.")) and start[k].is_floating_point()]
        assert sum(not torch.equal(state[k].float(), start[k].float()) for k in det2) > len(det2) // 2
    with pytest.raises(ValueError, match="needs a dynamic"):
        train.run(cfg="yolov7-tiny", data=str(demo["data"]), img_size=64, epochs=1, workers=0, device="cpu",
                  project=str(tmp_path), name="bad", noval=True, plots=False, freeze_detector1=True)


def test_ctrl_c_says_where_last_pt_is_in_one_line(demo: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    from utils.train.trainer import Trainer
    original = Trainer.train_epoch

    def interrupted_in_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)
    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_epoch_2)
    args = ["--cfg", "yolov7-tiny", "--data", str(demo["data"]), "--hyp", str(demo["hyp"]), "--img-size", "64",
            "--epochs", "3", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp_path),
            "--name", "ctrl-c", "--no-plots", "--noval"]
    assert train.main(args) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("interrupted")]
    last = tmp_path / "ctrl-c" / "weights" / "last.pt"
    assert err == [f"interrupted: stopped in epoch 2; {last} holds the 1 finished epoch: "
                   f"continue with python train.py --resume {last}"]
    assert read_checkpoint(last)["epoch"] == 0


def test_a_size_off_the_stride_is_rounded_up_with_a_warning(demo: dict, tmp_path: Path, caplog) -> None:
    import logging
    with caplog.at_level(logging.WARNING):
        out = train.run(cfg="yolov7-tiny", data=str(demo["data"]), hyp=str(demo["hyp"]), img_size=50, epochs=1,
                        batch_size=8, workers=0, device="cpu", project=str(tmp_path), name="r", noval=True,
                        plots=False)
    assert read_checkpoint(out["last"])["img_size"] == 64  # as detect.py and test.py round it
    assert any("--img-size 50 is not a multiple of the stride 32; using 64" in r.getMessage() for r in caplog.records)
