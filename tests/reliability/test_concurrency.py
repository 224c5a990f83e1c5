"""Concurrency: one DyDet shared by threads matches serial calls; parallel runs never share a folder."""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dydet import DyDet
from tests.conftest import REPO
from utils.defaults import DEMO_WEIGHTS
from utils.inference.results import Result
from utils.paths import increment_path

IMAGES = sorted((REPO / "data" / "images").glob("*.jpg"))
PROCESSES, RUNS_EACH = 4, 8


def _key(results: list[Result]) -> list[tuple]:
    return [(r.route, r.phi, np.round(r.boxes, 4).tolist(), r.scores.round(5).tolist(), r.classes.tolist())
            for r in results]


def test_one_dydet_from_threads_equals_serial_calls() -> None:
    model = DyDet(DEMO_WEIGHTS, device="cpu")
    images = [str(p) for p in IMAGES] * 2
    serial = [_key(model.predict(p, img_size=128)) for p in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda p: _key(model.predict(p, img_size=128)), images))
    assert threaded == serial
    assert any(k[0][2] for k in serial), "the demo model should find something on its own images"


def test_runs_never_reuse_a_folder_without_exist_ok(tmp_path: Path) -> None:
    first = increment_path(tmp_path / "exp", mkdir=True)
    (first / "result.txt").write_text("first run")
    second = increment_path(tmp_path / "exp", mkdir=True)
    assert (first, second) == (tmp_path / "exp", tmp_path / "exp2") and second.is_dir()
    assert increment_path(tmp_path / "exp", exist_ok=True, mkdir=True) == first
    assert (first / "result.txt").read_text() == "first run"


def _claim_after(root: str, barrier, out) -> None:
    barrier.wait()
    out.put([str(increment_path(Path(root) / "detect" / "exp", mkdir=True)) for _ in range(RUNS_EACH)])


@pytest.mark.parametrize("attempt", range(2))
def test_parallel_processes_get_different_run_folders(tmp_path: Path, attempt: int) -> None:
    ctx = mp.get_context("fork")  # a spawned child would re-import torch: seconds each
    barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_claim_after, args=(str(tmp_path), barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    claimed = [d for _ in procs for d in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(claimed) == len(set(claimed)) == PROCESSES * RUNS_EACH
    assert sorted(p.name for p in (tmp_path / "detect").iterdir()) == \
        sorted(["exp"] + [f"exp{n}" for n in range(2, PROCESSES * RUNS_EACH + 1)])


def test_check_then_create_is_what_races(tmp_path: Path) -> None:
    """Without ``mkdir`` the name is only proposed: two callers before either creates it get the same one."""
    assert increment_path(tmp_path / "exp") == increment_path(tmp_path / "exp")
