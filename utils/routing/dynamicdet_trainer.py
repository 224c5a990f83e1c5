"""Stage-2 training loop of DynamicDet: the router on frozen detectors (paper Sec. 3.3).

Only the router learns. Backbone 1, backbone 2 and both heads run once per image, without
gradients and with every BatchNorm in eval mode, to collect the router's pooled inputs and both
detectors' losses (:mod:`utils.routing.dynamicdet_cache`); the epochs then train the router's FC layers on
those samples, which is exact because nothing upstream changes. Under torchrun every process
collects its share, the shares are gathered, and only the router is wrapped in DDP.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from utils.routing.dynamicdet_cache import RouterSamples, collect_samples
from utils.routing.samples import epoch_batches
from utils.routing.calibration import calibration_record
from utils.routing.latency import route_costs
from utils.routing.loss import logit_decay, routed_loss, router_objective
from utils.torch_utils import DistInfo, ddp_wrap
from utils.train.loop import EpochLoop, Progress, RunLog
from utils.train.loss import ComputeLoss
from utils.weights.checkpoints import save_checkpoint

LOGGER = logging.getLogger("dydet.train_router")
HARD_PERCENTS = range(10, 100, 10)  # hard fractions averaged by the routed-loss metric


class RouteBatch(NamedTuple):
    """Per-image difficulty φ and detection losses of both detectors."""

    phi: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor


class PooledRouter(nn.Module):
    """The router's FC layers on pooled inputs (what DDP wraps: the detectors never run in training);
    returns the logits, φ = sigmoid(logits)."""

    def __init__(self, router: nn.Module) -> None:
        super().__init__()
        self.router = router

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.router.logits_from_pooled(pooled)


def freeze_detectors(model: nn.Module) -> list[nn.Parameter]:
    """requires_grad False for everything but ``router.*``; returns the router's parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("router."))
    return list(model.router.parameters())


def frozen_mode(model: nn.Module) -> nn.Module:
    """Training mode (heads return raw maps for the loss) with every BatchNorm in eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    return model


def samples_on(model: nn.Module, loader, compute_loss: ComputeLoss, device: torch.device, info: DistInfo,
               desc: str) -> RouterSamples:
    """Every image's router input and losses (one pass, all processes' shares gathered)."""
    frozen_mode(model)
    return collect_samples(model, loader, compute_loss, device, desc, info.is_main).gather(info)


@dataclass
class RouterLoop:
    """What the stage-2 loop needs to know of a run's options."""

    epochs: int
    batch_size: int  # total over all processes
    img_size: int
    lr: float
    weight_decay: float
    strategy: str = "adaptive"
    seed: int = 0
    epoch_samples: int = 0  # an epoch passes over at least this many samples (small data: several passes)
    patience: int = 0  # stop after this many epochs without a better validation routed loss (0: never)
    logit_decay: float = 0.0  # weight of the mean squared logit (keeps φ from saturating; 0: Eq. 12 alone)
    gain_scale: float = 1.0  # Eq. 12 is divided by this (the typical |L1 - L2 - Δ|), so the decay is scale-free


@dataclass
class RouterTrainer(EpochLoop):
    """Trains ``model.router`` by ``loop.strategy`` for ``loop.epochs`` epochs; ``fit()`` runs the rest.

    ``train`` holds every training image's samples (gathered over processes), ``val`` the
    validation images' (main process only; None elsewhere). ``record`` is the run's full
    options as plain values, stored in last.pt for ``--resume``.
    """

    script = "train_router.py"  # what resumes a run
    epoch_bar = "router"  # epochs on cached samples take a moment each: one bar over all of them

    model: nn.Module
    loop: RouterLoop
    delta: float
    train: RouterSamples
    val: RouterSamples | None
    save_dir: Path
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    progress: Progress = field(default_factory=Progress)
    costs: dict = field(default_factory=dict)  # route latencies and GFLOPs stored with the calibration
    record: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)  # training-image records carried into the checkpoints' meta

    def __post_init__(self) -> None:
        self.wdir = self.save_dir / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.epochs, self.is_main = self.loop.epochs, self.dist.is_main
        params = freeze_detectors(self.model)
        self.optimizer = torch.optim.AdamW(params, lr=self.loop.lr, weight_decay=self.loop.weight_decay)
        self.log = RunLog(self.save_dir, tensorboard=False, title="router epoch") if self.dist.is_main else None
        if self.dist.is_main and not self.costs:
            self.costs = route_costs(self.model, self.loop.img_size)
            LOGGER.info("route costs at %d px: %s", self.loop.img_size,
                        ", ".join(f"{k} {v:.4g}" for k, v in self.costs.items()))
        head = PooledRouter(self.model.router)
        self.router = ddp_wrap(head, self.dist, self.device)
        self.start = {k: v.detach().clone() for k, v in self.model.router.state_dict().items()}
        self.best_epoch = -1
        self.best_phi: torch.Tensor | None = None  # validation φ of the router in best.pt

    def restore(self, extra: dict) -> None:
        """Optimizer and counters from a last.pt (the router weights came with the model)."""
        self.optimizer.load_state_dict(extra["optimizer"])
        self.progress = Progress(int(extra["epoch"]) + 1, float(extra["best_fitness"]))
        self.best_epoch = int(extra.get("best_epoch", extra["epoch"]))
        if self.dist.is_main:
            self.log.resume_at(self.progress.epoch)

    def stop_early(self, epoch: int) -> bool:
        """After ``loop.patience`` epochs without a better validation routed loss (decided on the
        main process, which validates, and shared with the others)."""
        flag = [self.is_main and self.loop.patience > 0 and epoch - self.best_epoch >= self.loop.patience]
        if self.dist.rank >= 0:
            torch.distributed.broadcast_object_list(flag, src=0)
        if flag[0] and self.is_main:
            LOGGER.info("stopped after epoch %d: no better validation routed loss for %d epochs (best: epoch %d, "
                        "in best.pt)", epoch + 1, self.loop.patience, self.best_epoch + 1)
        return bool(flag[0])

    def movement(self) -> float:
        """How far the router's weights moved since the start: max |change| / max |weight| per tensor."""
        now = self.model.router.state_dict()
        return max(float((now[k] - v).abs().max() / v.abs().max().clamp(min=1e-12))
                   for k, v in self.start.items() if v.is_floating_point())

    def train_epoch(self, epoch: int) -> float:
        per_rank = max(self.loop.batch_size // max(self.dist.world_size, 1), 1)
        batches = epoch_batches(len(self.train), per_rank, epoch, self.loop.seed, self.dist, self.loop.epoch_samples)
        total = 0.0
        for idx in batches:
            total += self.step(self.train.subset(idx))
        return total / max(len(batches), 1)

    def step(self, batch: RouterSamples) -> float:
        """One AdamW step of the router on a batch of samples; returns the batch loss."""
        logits = self.router(batch.pooled.to(self.device))
        scale = self.loop.gain_scale if self.loop.strategy == "adaptive" else 1.0
        objective = router_objective(self.loop.strategy, logits.sigmoid(), batch.l1.to(self.device),
                                     batch.l2.to(self.device), self.delta, keys=batch.names, seed=self.loop.seed,
                                     gain_scale=scale)
        loss = objective + logit_decay(logits, self.loop.logit_decay)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"router loss became {loss.item()}; check the stage-1 weights")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the router's gradients over processes
        self.optimizer.step()
        return objective.item() * scale  # the strategy's own loss, as validation reports it

    @torch.no_grad()
    def val_routes(self) -> RouteBatch:
        """φ of the current router and L1, L2 on the validation images."""
        phi = self.model.router.logits_from_pooled(self.val.pooled.to(self.device)).sigmoid().cpu()
        return RouteBatch(phi, self.val.l1, self.val.l2)

    # ---- end of epoch ------------------------------------------------------------------
    def end_epoch(self, epoch: int, train_loss: float, seconds: float) -> dict:
        res = self.val_routes()
        metrics = {"router_loss": float(router_objective("adaptive", res.phi, res.l1, res.l2, self.delta)),
                   "routed_loss": float(np.mean([routed_loss(res.phi, res.l1, res.l2, k) for k in HARD_PERCENTS]))}
        improved = self.progress.improved(-metrics["routed_loss"])
        self.best_epoch = epoch if improved else self.best_epoch
        self.best_phi = res.phi if improved else self.best_phi
        self.log.write({"epoch": epoch, "train/loss": train_loss, "val/router_loss": metrics["router_loss"],
                        "val/routed_loss": metrics["routed_loss"], "delta": self.delta,
                        "lr": float(self.optimizer.param_groups[0]["lr"]), "seconds": seconds}, self.loop.epochs)
        calib = calibration_record(res.phi, img_size=self.loop.img_size, images=self.val.keys, **self.costs)
        self._save(epoch, improved, calib)
        return {**metrics, "thresholds": calib, "phi": res.phi}

    def _save(self, epoch: int, improved: bool, calib: dict) -> None:
        meta = {**self.lineage, "epoch": epoch, "stage": "router", "strategy": self.loop.strategy, "delta": self.delta,
                "run": str(self.save_dir)}
        extra = {"epoch": epoch, "best_fitness": self.progress.best_fitness, "best_epoch": self.best_epoch,
                 "delta": self.delta, "gain_scale": self.loop.gain_scale,
                 "optimizer": self.optimizer.state_dict(), "train_opt": self.record}
        kw = {"names": self.model.names, "img_size": self.loop.img_size, "thresholds": calib, "meta": meta}
        save_checkpoint(self.wdir / "last.pt", self.model, extra=extra, **kw)
        if improved:
            save_checkpoint(self.wdir / "best.pt", self.model, **kw)
