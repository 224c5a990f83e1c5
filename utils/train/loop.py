"""What the trainers (stage 1, the DynamicDet router, the DualRes router) share: the epoch loop, the best-so-far bookkeeping and the run's log.

:class:`EpochLoop` runs the remaining epochs of a (possibly resumed) run: a subclass trains one
epoch in :meth:`EpochLoop.train_epoch` and, on the main process, scores and saves it in
:meth:`EpochLoop.end_epoch`. :class:`RunLog` writes ``results.csv`` (one row per epoch, fsynced;
a resumed run first drops the rows of epochs it will repeat) and, when available, TensorBoard
scalars.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.io import append_csv, truncate_csv

LOGGER = logging.getLogger("dydet.train")


@dataclass
class Progress:
    """Where a run is: the next epoch to run and the best validation fitness so far."""

    epoch: int = 0
    best_fitness: float = float("-inf")

    def improved(self, fitness: float) -> bool:
        """Record ``fitness``; True when it beats every earlier epoch (best.pt is then saved)."""
        better = fitness > self.best_fitness
        self.best_fitness = max(fitness, self.best_fitness)
        return better


class RunLog:
    """``results.csv`` of a run plus optional TensorBoard scalars, one row per epoch."""

    def __init__(self, save_dir: Path, tensorboard: bool = True, title: str = "epoch") -> None:
        self.csv = Path(save_dir) / "results.csv"
        self.title = title
        self.writer = _tensorboard(save_dir) if tensorboard else None
        self.widths: list[int] = []  # console column widths, set by the header

    def resume_at(self, next_epoch: int) -> None:
        """Drop the rows of epochs >= ``next_epoch`` (logged, then killed before the checkpoint)."""
        truncate_csv(self.csv, next_epoch)

    def write(self, row: dict[str, float], epochs: int) -> None:
        """Append ``row`` (its ``epoch`` counts from 0) and log it as one line."""
        append_csv(self.csv, row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and math.isfinite(v):
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()
        shown = [k for k in row if on_console(k)]
        if not self.widths:  # the console shows the rows as a table: the header once per run
            names = [self.title, *(column_name(k) for k in shown)]
            self.widths = [max(CELL, len(n) + 1) for n in names]
            LOGGER.info(table_line(names, self.widths))
        LOGGER.info(table_line([f"{row['epoch'] + 1}/{epochs}", *(_cell(row[k]) for k in shown)], self.widths))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


COLUMN_NAMES = {"metrics/precision": "P", "metrics/recall": "R", "metrics/map50": "mAP50", "metrics/map": "mAP"}
CELL = 11  # characters per console column
_PER_DETECTOR_ITEM = re.compile(r"(train|val)/(box|obj|cls)[12]")


def on_console(key: str) -> bool:
    """Whether a results.csv column is in the console table: all but the epoch (the row's first
    cell) and each detector's box/obj/cls items (their totals are shown; the CSV keeps them all)."""
    return key != "epoch" and not _PER_DETECTOR_ITEM.fullmatch(key)


def column_name(key: str) -> str:
    """A results.csv column as a short console heading: 'train/box' -> 'box', 'val/total' ->
    'val total', 'metrics/detector2_map50' -> 'd2 mAP50'."""
    if key in COLUMN_NAMES:
        return COLUMN_NAMES[key]
    group, _, name = key.rpartition("/")
    if group == "metrics" and name.startswith("detector"):
        det, _, metric = name.partition("_")
        return f"d{det[-1]} {COLUMN_NAMES.get('metrics/' + metric, metric)}"
    return f"val {name}" if group == "val" else name


def table_line(cells: list[str], widths: list[int]) -> str:
    return "".join(f"{c:>{w}}" for c, w in zip(cells, widths))


def _cell(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4g}"


def _tensorboard(save_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        LOGGER.warning("tensorboard not installed: no event files")
        return None
    return SummaryWriter(str(save_dir))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with where the last finished epoch is and how to go on from it."""


class EpochLoop:
    """Runs epochs ``progress.epoch .. epochs - 1``; subclasses define one epoch's work.

    ``save_dir`` is the run folder (``weights/last.pt`` holds the last finished epoch) and
    ``script`` the script that resumes it.
    """

    epochs: int
    progress: Progress
    is_main: bool
    save_dir: Path
    script: str = "train.py"
    epoch_bar: str | None = None  # a progress bar over the epochs, with this title (for short epochs)

    def fit(self) -> Any:
        """Train the remaining epochs; returns the last epoch's metrics (main process).

        Ctrl-C raises :class:`TrainingInterrupted` saying where ``last.pt`` is and the command
        that resumes the run (the scripts print it as one line instead of a traceback).
        """
        metrics: Any = {}
        bar = tqdm(total=self.epochs, initial=self.progress.epoch, desc=self.epoch_bar, unit="epoch",
                   disable=not (self.is_main and self.epoch_bar))
        try:
            for epoch in range(self.progress.epoch, self.epochs):
                t0 = time.time()
                loss = self.train_epoch(epoch)
                if self.is_main:
                    metrics = self.end_epoch(epoch, loss, time.time() - t0)
                self.progress.epoch = epoch + 1
                if not bar.disable:
                    bar.set_postfix(loss=f"{_main_loss(loss):.4f}", refresh=False)
                    bar.update()
                if self.stop_early(epoch):
                    break
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            raise TrainingInterrupted(self._resume_hint()) from None
        finally:
            bar.close()
        return metrics

    def stop_early(self, epoch: int) -> bool:
        """Whether to end the run after ``epoch`` (a trainer with early stopping overrides this)."""
        return False

    def _resume_hint(self) -> str:
        last = Path(self.save_dir) / "weights" / "last.pt"
        if self.progress.epoch == 0 or not last.exists():
            return f"stopped before the first epoch ended; nothing to resume in {self.save_dir}"
        done = self.progress.epoch
        return (f"stopped in epoch {done + 1}; {last} holds the {done} finished epoch{'s' * (done != 1)}: "
                f"continue with python {self.script} --resume {last}")

    def train_epoch(self, epoch: int) -> Any:
        raise NotImplementedError

    def end_epoch(self, epoch: int, loss: Any, seconds: float) -> Any:
        raise NotImplementedError


def _main_loss(loss: Any) -> float:
    """An epoch's loss as one number: ``train_epoch`` returns a number or a dict with ``'loss'``."""
    return float(loss["loss"] if isinstance(loss, dict) else loss)
