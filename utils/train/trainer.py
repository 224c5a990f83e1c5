"""Stage-1 training loop (plain models, or both detectors of a dynamic model: paper Eq. 9)."""
from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from utils.weights.checkpoints import save_checkpoint
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.evaluation.metrics import fitness
from utils.train.optim import build_optimizer, one_cycle, warmup
from utils.torch_utils import DistInfo, ModelEMA, de_parallel, train_keep_frozen_bn

LOGGER = logging.getLogger("dydet.train")
NOMINAL_BATCH = 64


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model weights."""

    epoch: int = 0  # next epoch to run
    best_fitness: float = -1.0
    ema_updates: int = 0


@dataclass
class Trainer:
    """Owns model, optimizer, EMA and loaders for one run; ``fit()`` runs the remaining epochs."""

    model: nn.Module
    hyp: dict
    opt: Any  # argparse-like namespace of train.py options
    train_loader: Any
    val_fn: Any  # callable(model, epoch, final) -> metrics dict, or None
    save_dir: Path
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    names: list[str] = field(default_factory=list)
    state: TrainState = field(default_factory=TrainState)

    def __post_init__(self) -> None:
        self.wdir = self.save_dir / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        nb = len(self.train_loader)
        total_batch = self.opt.batch_size
        nbs = int(self.hyp.get("nbs", NOMINAL_BATCH))  # nominal batch: gradients accumulate up to it
        self.accumulate = max(round(nbs / total_batch), 1)
        decay = self.hyp["weight_decay"] * total_batch * self.accumulate / nbs
        self.optimizer = build_optimizer(self.model, {**self.hyp, "weight_decay": decay}, self.opt.adam)
        self.lf = one_cycle(self.hyp["lrf"], self.opt.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lf)
        self.ema = ModelEMA(self.model) if self.dist.is_main else None
        self.n_warmup = round(self.hyp.get("warmup_epochs", 0) * nb)
        self.cuda = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda)
        base = de_parallel(self.model)
        gains = scale_loss_gains(self.hyp, base.heads[0].nl, base.nc, self.opt.img_size)
        self.compute_loss = ComputeLoss(base, gains)
        self.train_model = DDP(self.model, device_ids=[self.device.index] if self.cuda else None) \
            if self.dist.rank >= 0 else self.model
        self.writer = _tensorboard(self.save_dir) if self.dist.is_main else None

    # ---- resume ------------------------------------------------------------------------
    def restore(self, extra: dict) -> None:
        """Raw weights, optimizer, scheduler and counters from a last.pt's training entries.

        The trainer was built around the checkpoint's (EMA) model weights, so the EMA copy is
        already right; the raw training weights come from ``train_model``.
        """
        de_parallel(self.model).load_state_dict(extra["train_model"])
        self.optimizer.load_state_dict(extra["optimizer"])
        self.state = TrainState(int(extra["epoch"]) + 1, float(extra["best_fitness"]), int(extra["ema_updates"]))
        if self.ema is not None:
            self.ema.updates = self.state.ema_updates
            _truncate_csv(self.save_dir / "results.csv", self.state.epoch)
        self.scheduler.last_epoch = self.state.epoch - 1
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.lf(self.state.epoch)

    # ---- loop --------------------------------------------------------------------------
    def fit(self) -> dict:
        metrics: dict = {}
        for epoch in range(self.state.epoch, self.opt.epochs):
            t0 = time.time()
            losses = self._train_epoch(epoch)
            self.scheduler.step()
            if self.dist.is_main:
                metrics = self._end_epoch(epoch, losses, time.time() - t0)
        return metrics

    def _train_epoch(self, epoch: int) -> np.ndarray:
        train_keep_frozen_bn(self.model)  # frozen layers (--freeze, --freeze-detector1) keep their BN
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        nb, mloss = len(self.train_loader), None
        bar = tqdm(self.train_loader, total=nb, desc=f"epoch {epoch + 1}/{self.opt.epochs}",
                   disable=not self.dist.is_main, leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (imgs, targets, paths, _) in enumerate(bar):
            step = i + nb * epoch
            if step <= self.n_warmup and self.n_warmup > 0:
                warmup(self.optimizer, step, self.n_warmup, epoch, self.lf, self.hyp)
            items = self._train_step(imgs, targets, step)
            mloss = items if mloss is None else (mloss * i + items) / (i + 1)
            bar.set_postfix(loss=f"{mloss[3]:.4f}")
            if epoch == 0 and i < 3 and self.dist.is_main and self.opt.plots:
                _plot_train_batch(imgs, targets, paths, self.names, self.save_dir / f"train_batch{i}.jpg")
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
    def _end_epoch(self, epoch: int, losses: np.ndarray, seconds: float) -> dict:
        final = epoch + 1 == self.opt.epochs
        metrics = {}
        if self.val_fn is not None and (not self.opt.noval or final):
            metrics = self.val_fn(self.ema.ema, epoch, final)
        fit = _fitness(metrics)
        improved = fit > self.state.best_fitness
        self.state.best_fitness = max(fit, self.state.best_fitness)
        row = self._log_row(epoch, losses, metrics, seconds)
        self._save(epoch, improved)
        LOGGER.info("epoch %d/%d: %s", epoch + 1, self.opt.epochs,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        return metrics

    def _log_row(self, epoch: int, losses: np.ndarray, metrics: dict, seconds: float) -> dict:
        row: dict[str, float] = {"epoch": epoch}
        row.update({f"train/{n}": float(v) for n, v in zip(self.compute_loss.item_names, losses)})
        for key in ("precision", "recall", "map50", "map"):
            row[f"metrics/{key}"] = float(metrics.get(key, float("nan")))
        for det in ("detector1", "detector2"):
            if det in metrics.get("dynamic", {}):
                for key in ("map50", "map"):
                    row[f"metrics/{det}_{key}"] = float(metrics["dynamic"][det][key])
        row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        row["seconds"] = seconds
        _append_csv(self.save_dir / "results.csv", row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and math.isfinite(v):
                    self.writer.add_scalar(k, v, epoch)
            self.writer.flush()
        return row

    def _save(self, epoch: int, improved: bool) -> None:
        extra = {
            "epoch": epoch, "best_fitness": self.state.best_fitness, "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "train_model": {k: v.detach().cpu() for k, v in de_parallel(self.model).state_dict().items()},
            "train_opt": yaml_safe(vars(self.opt)), "hyp": yaml_safe(self.hyp),
        }
        meta = {"epoch": epoch, "stage": "stage1", "run": str(self.save_dir)}
        # 'model' holds the EMA weights (what inference should use); 'train_model' the raw
        # weights so that a resumed run continues exactly.
        last = save_checkpoint(self.wdir / "last.pt", self.ema.ema, names=self.names, meta=meta, extra=extra)
        if improved:
            save_checkpoint(self.wdir / "best.pt", self.ema.ema, names=self.names, meta=meta)
        period = getattr(self.opt, "save_period", -1)
        if period > 0 and (epoch + 1) % period == 0:
            save_checkpoint(self.wdir / f"epoch{epoch}.pt", self.ema.ema, names=self.names, meta=meta)
        LOGGER.debug("saved %s", last)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fitness(metrics: dict) -> float:
    """Validation fitness; a dynamic model scores the mean of its two detectors."""
    if not metrics:
        return 0.0
    dyn = metrics.get("dynamic")
    if dyn:
        return float(np.mean([fitness(dyn[d]["map50"], dyn[d]["map"]) for d in ("detector1", "detector2")]))
    return float(fitness(metrics["map50"], metrics["map"]))


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_csv(path: Path, next_epoch: int) -> None:
    """Drop rows of epochs that a resumed run will repeat (killed after logging, before saving)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(float(r["epoch"])) < next_epoch]
    if len(keep) == len(rows) or not rows:
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    tmp.replace(path)


def yaml_safe(d: dict) -> dict:
    """Options/hyp as YAML-safe plain values (paths -> str)."""
    return yaml.safe_load(yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}))


def _tensorboard(save_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        LOGGER.warning("tensorboard not installed: no event files")
        return None
    return SummaryWriter(str(save_dir))


def _plot_train_batch(imgs, targets, paths, names, path: Path) -> None:
    from utils.evaluation.plots import plot_images
    plot_images(imgs, targets, paths, names, path)
