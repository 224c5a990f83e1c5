"""``--resume`` for train.py and train_router.py: find the interrupted run and its options."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, TypeVar

from utils.paths import latest_checkpoint
from utils.weights.checkpoints import CheckpointError, read_checkpoint

LOGGER = logging.getLogger("dydet.train")
T = TypeVar("T")
STATE_KEYS = frozenset({"epoch", "optimizer", "train_opt"})


def resume_options(opts: T, required: frozenset[str] = STATE_KEYS, script: str = "train.py") -> tuple[T, Path, dict]:
    """(options of the interrupted run, its last.pt, the checkpoint's training entries).

    ``opts.resume`` is a last.pt path, or True for the newest ``<project>/*/weights/last.pt``.
    The run continues in its own folder with its own options; only ``device`` may change.
    """
    ckpt = Path(opts.resume) if isinstance(opts.resume, (str, Path)) else latest_checkpoint(opts.project)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {ckpt} not found")
    state = read_checkpoint(ckpt)
    if not isinstance(state, dict) or not required <= set(state):
        raise CheckpointError(f"--resume: {ckpt} has no {script} training state (use a run's weights/last.pt)")
    stored: dict[str, Any] = dict(state["train_opt"])
    if int(state["epoch"]) + 1 >= int(stored["epochs"]):
        raise ValueError(f"--resume: {ckpt} is from a run that already finished all its epochs")
    known = {f.name for f in dataclasses.fields(opts)}
    kept = {k: v for k, v in stored.items() if k in known - {"resume", "device", "save_dir"}}
    resumed = dataclasses.replace(opts, **kept, resume=str(ckpt), device=opts.device or stored.get("device", ""),
                                  save_dir=str(ckpt.resolve().parents[1]))
    LOGGER.info("resuming %s from epoch %d", resumed.save_dir, int(state["epoch"]) + 1)
    return resumed, ckpt, state
