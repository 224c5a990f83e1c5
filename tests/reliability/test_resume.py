"""``--resume`` after a SIGKILL at a random moment ends where an uninterrupted run ends.

train.py and train_router.py run as subprocesses (one thread, ``--workers 0``, CPU: the setting
in which resume is bit-exact, see utils/train/rng.py). Each trial kills a run at a random moment
after its first checkpoint (mid-epoch, mid-validation or mid-save), resumes it from last.pt
until it finishes, and compares its final last.pt (every tensor with ``torch.equal``: EMA and
raw weights, optimizer state, random state; every other entry but provenance, options and
measured latencies) and results.csv (every column but the time) with
those of a run that was never interrupted.
"""
from __future__ import annotations

import csv
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from data.make_demo_data import make_demo_dataset
from models.yolo import build_model
from tests.conftest import REPO
from utils.weights.checkpoints import read_checkpoint, save_checkpoint

NAMES = ["circle", "square", "triangle", "cross"]
TRIALS = 2  # kills per script: one in each half of the checkpointed span
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
IGNORED_ENTRIES = {"meta", "train_opt"}  # provenance (date, run folder) and the options (resume=...)
TIME_COLUMNS = {"seconds"}
MEASURED = {"latency_ms"}  # route latencies timed on this machine (the router's calibration record)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A tiny data set, the tiny recipe with one optimizer step per batch of 4 (nbs 4: EMA and
    momentum move every step) and a stage-1 dynamic checkpoint for the router."""
    root = tmp_path_factory.mktemp("resume")
    yaml_path = make_demo_dataset(root / "demo", n_train=8, n_val=4, img_size=64, seed=0)
    hyp = yaml.safe_load((REPO / "data" / "hyp.scratch.tiny.yaml").read_text(encoding="utf-8"))
    (root / "hyp.yaml").write_text(yaml.safe_dump({**hyp, "nbs": 4}), encoding="utf-8")
    torch.manual_seed(0)
    model = build_model("dy-yolov7-tiny", names=NAMES)
    with torch.no_grad():
        model.train()(torch.rand(2, 3, 64, 64))  # BN statistics away from their init
    return {"data": yaml_path, "hyp": root / "hyp.yaml",
            "stage1": save_checkpoint(root / "stage1.pt", model, names=NAMES)}


def train_cmd(data: dict, project: Path, name: str) -> list[str]:
    """train.py with augmentation on (mosaic, flips, HSV: the dataset's generator matters)."""
    return [sys.executable, "train.py", "--cfg", "yolov7-tiny", "--data", str(data["data"]), "--hyp", str(data["hyp"]),
            "--img-size", "64", "--epochs", "3", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--project", str(project),
            "--name", name, "--no-plots", "--seed", "3"]


def router_cmd(data: dict, project: Path, name: str) -> list[str]:
    return [sys.executable, "train_router.py", "--weights", str(data["stage1"]), "--data", str(data["data"]),
            "--img-size", "64", "--epochs", "3", "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--lr", "1e-3", "--project", str(project), "--name", name, "--seed", "3"]


def checkpointed_span(cmd: list[str], last: Path) -> float:
    """Run ``cmd`` to completion; returns the seconds from its first last.pt to its final one
    (kills within that span interrupt an epoch after the first)."""
    log = last.parents[1].with_suffix(".log")  # not a pipe: a full pipe would stall the run
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        first = latest = seen = None
        while proc.poll() is None:
            stamp = last.stat().st_mtime_ns if last.exists() else None
            if stamp is not None and stamp != seen:
                seen, latest = stamp, time.monotonic()
                first = first if first is not None else latest
            time.sleep(0.01)
    assert proc.returncode == 0, log.read_text(encoding="utf-8")[-3000:]
    assert first is not None and latest > first, "too fast to watch: make the run longer"
    return latest - first


def kill_at_random(cmd: list[str], last: Path, window: tuple[float, float], rng: random.Random
                   ) -> tuple[float, bool]:
    """Start ``cmd``, SIGKILL it a random time within ``window`` (s) after its first last.pt.

    Returns (the delay, whether the run had already finished when the kill came).
    """
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and not last.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    delay = rng.uniform(*window)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return delay, False
    assert proc.returncode == 0, f"{cmd[1]} failed before it could be killed"
    return delay, True


def resume(script: str, last: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, "--resume", str(last)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=900, check=False)


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two checkpoint entries differ (tensors bit for bit, everything else with ==)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a if k not in MEASURED for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return [] if a == b or both_nan else [f"{where}: {a!r} != {b!r}"]


def results(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def final_state(run_dir: Path) -> dict:
    ckpt = read_checkpoint(run_dir / "weights" / "last.pt")
    return {k: v for k, v in ckpt.items() if k not in IGNORED_ENTRIES}


def check_kills(script: str, make_cmd, data: dict, tmp_path: Path, seed: int) -> list[str]:
    """TRIALS kill/resume cycles compared with a straight run; returns one line per trial."""
    span = checkpointed_span(make_cmd(data, tmp_path, "straight"), tmp_path / "straight" / "weights" / "last.pt")
    reference, ref_rows = final_state(tmp_path / "straight"), results(tmp_path / "straight")
    assert [int(float(r["epoch"])) for r in ref_rows] == [0, 1, 2]
    assert script != "train.py" or reference["ema_updates"] == 6, "the optimizer must step"
    rng, report = random.Random(seed), []
    for trial in range(TRIALS):
        run_dir = tmp_path / f"killed{trial}"
        last = run_dir / "weights" / "last.pt"
        window = (span * trial / TRIALS, span * (trial + 1) / TRIALS)  # trials cover the span in turn
        delay, finished = kill_at_random(make_cmd(data, tmp_path, run_dir.name), last, window, rng)
        killed_at = int(read_checkpoint(last)["epoch"])
        if not finished and killed_at < 2:
            res = resume(script, last)
            assert res.returncode == 0, f"trial {trial} (killed {delay:.2f}s after last.pt): {res.stderr[-3000:]}"
        assert not differences(reference, final_state(run_dir)), \
            f"trial {trial} (killed {delay:.2f}s after last.pt, epoch {killed_at} saved): " \
            f"{differences(reference, final_state(run_dir))[:10]}"
        assert results(run_dir) == ref_rows, f"trial {trial}: results.csv differs"
        report.append(f"{script} trial {trial}: killed {delay:.2f}s after the first last.pt "
                      f"({'after the end' if finished else f'last saved epoch {killed_at}'}): identical")
    return report


@pytest.mark.long(40)
def test_train_resume_after_sigkill_is_bit_exact(data: dict, tmp_path: Path) -> None:
    for line in check_kills("train.py", train_cmd, data, tmp_path, seed=14):
        print(line)
    again = resume("train.py", tmp_path / "killed0" / "weights" / "last.pt")  # a finished run: nothing to resume
    assert again.returncode != 0 and "already finished" in again.stderr, again.stderr[-1000:]


def test_router_resume_after_sigkill_is_bit_exact(data: dict, tmp_path: Path) -> None:
    for line in check_kills("train_router.py", router_cmd, data, tmp_path, seed=15):
        print(line)
