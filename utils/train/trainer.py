"""Stage-1 training loop (plain models, or both detectors of a dynamic model: paper Eq. 9)."""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.evaluation.evaluate import EvalResult
from utils.torch_utils import DistInfo, ModelEMA, ddp_wrap, de_parallel, train_keep_frozen_bn
from utils.train.loop import EpochLoop, Progress, RunLog
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.train.validation import mean_or_nan
from utils.train.optim import build_optimizer, one_cycle, warmup
from utils.train.rng import capture_rng, restore_rng
from utils.weights.checkpoints import save_checkpoint

LOGGER = logging.getLogger("dydet.train")
NOMINAL_BATCH = 64


@dataclass
class TrainLoop:
    """What the stage-1 loop needs to know of a run's options."""

    epochs: int
    batch_size: int  # total over all processes
    img_size: int
    adam: bool = False
    noval: bool = False  # validate after the final epoch only
    plots: bool = True
    save_period: int = -1  # also keep epoch<N>.pt every N epochs


Validator = Callable[[nn.Module, int, bool], "EvalResult | None"]  # (model, epoch, final) -> scores


@dataclass
class Trainer(EpochLoop):
    """Owns model, optimizer, EMA and loaders for one run; ``fit()`` runs the remaining epochs.

    ``record`` is the run's full options as plain values, stored in last.pt for ``--resume``
    together with the weights, optimizer, EMA counter and random state (:mod:`utils.train.rng`):
    a single-process run with ``workers=0`` on CPU resumes bit-identically.
    """

    model: nn.Module
    hyp: dict
    loop: TrainLoop
    train_loader: Any
    val_fn: Validator | None
    save_dir: Path
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    names: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    trained_on: dict = field(default_factory=dict)  # image-set record of every image the weights learned from
    progress: Progress = field(default_factory=lambda: Progress(0, -1.0))

    def __post_init__(self) -> None:
        self.wdir = self.save_dir / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.epochs, self.is_main = self.loop.epochs, self.dist.is_main
        nb = len(self.train_loader)
        total_batch = self.loop.batch_size
        nbs = int(self.hyp.get("nbs", NOMINAL_BATCH))  # nominal batch: gradients accumulate up to it
        self.accumulate = max(round(nbs / total_batch), 1)
        decay = self.hyp["weight_decay"] * total_batch * self.accumulate / nbs
        self.optimizer = build_optimizer(self.model, {**self.hyp, "weight_decay": decay}, self.loop.adam)
        self.lf = one_cycle(self.hyp["lrf"], self.loop.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lf)
        self.ema = ModelEMA(self.model) if self.dist.is_main else None
        self.n_warmup = round(self.hyp.get("warmup_epochs", 0) * nb)
        self.cuda = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda)
        base = de_parallel(self.model)
        gains = scale_loss_gains(self.hyp, base.heads[0].nl, base.nc, self.loop.img_size)
        self.compute_loss = ComputeLoss(base, gains)
        self.train_model = ddp_wrap(self.model, self.dist, self.device)
        self.log = RunLog(self.save_dir) if self.dist.is_main else None

    # ---- resume ------------------------------------------------------------------------
    def restore(self, extra: dict) -> None:
        """Raw weights, optimizer, scheduler and counters from a last.pt's training entries.

        The trainer was built around the checkpoint's (EMA) model weights, so the EMA copy is
        already right; the raw training weights come from ``train_model``.
        """
        de_parallel(self.model).load_state_dict(extra["train_model"])
        self.optimizer.load_state_dict(extra["optimizer"])
        if extra.get("scaler") and self.scaler.is_enabled():  # empty when the run was not on CUDA
            self.scaler.load_state_dict(extra["scaler"])
        self.progress = Progress(int(extra["epoch"]) + 1, float(extra["best_fitness"]))
        if self.ema is not None:
            self.ema.updates = int(extra["ema_updates"])
            self.log.resume_at(self.progress.epoch)
        self.scheduler.last_epoch = self.progress.epoch  # as after the interrupted run's last step()
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.lf(self.progress.epoch)
        self._restore_rng(extra)

    def _restore_rng(self, extra: dict) -> None:
        """The random state of the interrupted run's epoch end (single process: under torchrun
        only the main process's state is stored, so the other ranks draw afresh)."""
        if "rng" not in extra:
            LOGGER.warning("checkpoint has no random state (older version): the resumed run continues, "
                           "but not bit-identically to an uninterrupted one")
        elif self.dist.rank < 0:
            restore_rng(extra["rng"], self.train_loader)

    # ---- loop --------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> np.ndarray:
        train_keep_frozen_bn(self.model)  # frozen layers (--freeze, --freeze-detector1) keep their BN
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        nb, mloss = len(self.train_loader), None
        bar = tqdm(self.train_loader, total=nb, desc=f"epoch {epoch + 1}/{self.loop.epochs}",
                   disable=not self.dist.is_main, leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (imgs, targets, paths, _) in enumerate(bar):
            step = i + nb * epoch
            if step <= self.n_warmup and self.n_warmup > 0:
                warmup(self.optimizer, step, self.n_warmup, epoch, self.lf, self.hyp)
            items = self._train_step(imgs, targets, step)
            mloss = items if mloss is None else (mloss * i + items) / (i + 1)
            bar.set_postfix(loss=f"{mloss[3]:.4f}")
            if epoch == 0 and i < 3 and self.dist.is_main and self.loop.plots:
                _plot_train_batch(imgs, targets, paths, self.names, self.save_dir / f"train_batch{i}.jpg")
        with warnings.catch_warnings():  # with gradient accumulation an epoch may end before the first step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        return mloss if mloss is not None else np.zeros(len(self.compute_loss.item_names))

    def _train_step(self, imgs: torch.Tensor, targets: torch.Tensor, step: int) -> np.ndarray:
        imgs = imgs.to(self.device, non_blocking=True).float() / 255.0
        targets = targets.to(self.device)
        with torch.autocast(device_type="cuda", enabled=self.cuda):
            out = self.train_model(imgs)
        loss, items = self.compute_loss(out, targets, imgs)
        if self.dist.rank >= 0:
            loss = loss * self.dist.world_size  # DDP averages gradients across processes
        self.scaler.scale(loss).backward()
        if (step + 1) % self.accumulate == 0:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower lr0 or check the data")
        return items.detach().cpu().numpy()

    # ---- end of epoch ------------------------------------------------------------------
    def end_epoch(self, epoch: int, losses: np.ndarray, seconds: float) -> EvalResult | None:
        final = epoch + 1 == self.loop.epochs
        result = None
        if self.val_fn is not None and (not self.loop.noval or final):
            result = self.val_fn(self.ema.ema, epoch, final)
        improved = self.progress.improved(result.fitness() if result is not None else 0.0)
        self.log.write(self._row(epoch, losses, result, seconds), self.loop.epochs)
        self._save(epoch, improved)
        return result

    def _row(self, epoch: int, losses: np.ndarray, result: EvalResult | None, seconds: float) -> dict:
        row: dict[str, float] = {"epoch": epoch}
        row.update({f"train/{n}": float(v) for n, v in zip(self.compute_loss.item_names, losses)})
        val = mean_or_nan(result.losses if result is not None else {}, self.compute_loss.item_names)
        row.update({f"val/{n}": v for n, v in val.items()})
        for key in ("precision", "recall", "map50", "map"):
            row[f"metrics/{key}"] = float(getattr(result, key)) if result is not None else float("nan")
        routing = result.routing if result is not None else None
        for det in ("detector1", "detector2") if de_parallel(self.model).is_dynamic else ():
            scores = getattr(routing, det, None) or {}  # the same columns in every row (NaN: not validated)
            for key in ("map50", "map"):
                row[f"metrics/{det}_{key}"] = float(scores.get(key, math.nan))
        row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        row["seconds"] = seconds
        return row

    def _save(self, epoch: int, improved: bool) -> None:
        extra = {
            "epoch": epoch, "best_fitness": self.progress.best_fitness, "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "train_model": {k: v.detach().cpu() for k, v in de_parallel(self.model).state_dict().items()},
            "train_opt": self.record, "hyp": self.hyp, "rng": capture_rng(self.train_loader),
            "scaler": self.scaler.state_dict(),  # AMP's loss scale (empty off CUDA)
        }
        meta = {"epoch": epoch, "stage": "stage1", "run": str(self.save_dir), "trained_on": self.trained_on}
        kw = {"names": self.names, "img_size": self.loop.img_size, "meta": meta}
        # 'model' holds the EMA weights (what inference should use); 'train_model' the raw
        # weights so that a resumed run continues exactly.
        save_checkpoint(self.wdir / "last.pt", self.ema.ema, extra=extra, **kw)
        if improved:
            save_checkpoint(self.wdir / "best.pt", self.ema.ema, **kw)
        period = self.loop.save_period
        if period > 0 and (epoch + 1) % period == 0:
            save_checkpoint(self.wdir / f"epoch{epoch}.pt", self.ema.ema, **kw)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _plot_train_batch(imgs, targets, paths, names, path: Path) -> None:
    from utils.evaluation.plots import plot_images
    plot_images(imgs, targets, paths, names, path)
