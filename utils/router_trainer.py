"""Stage-2 training loop of DynamicDet: the router on frozen detectors (paper Sec. 3.3).

Only the router learns. Backbone 1, backbone 2 and both heads run under ``no_grad`` with every
BatchNorm in eval mode (running statistics used and never updated); the router then runs with
gradients on the detached backbone-1 features. Under torchrun only the router is wrapped in DDP.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from utils.calibration import calibration_record
from utils.checkpoints import save_checkpoint
from utils.latency import route_costs
from utils.loss import ComputeLoss
from utils.router_loss import estimate_offset, router_objective
from utils.torch_utils import DistInfo
from utils.trainer import _append_csv, _truncate_csv, yaml_safe

LOGGER = logging.getLogger("dydet.train_router")
HARD_PERCENTS = range(10, 100, 10)  # hard fractions averaged by the routed-loss metric


class RouteBatch(NamedTuple):
    """Per-image difficulty φ and detection losses of both detectors."""

    phi: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor


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


def router_inputs(model: nn.Module, feats: list) -> list[torch.Tensor]:
    """The backbone-1 features the router pools, detached and in float32."""
    return [feats[p].detach().float() for p in model._router_pos]


def detector_losses(model: nn.Module, feats: list, targets: torch.Tensor, imgs: torch.Tensor,
                    compute_loss: ComputeLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image losses (L1, L2) of both detectors on backbone-1 features (no gradients)."""
    with torch.no_grad():
        with torch.autocast(device_type="cuda", enabled=imgs.is_cuda):
            outputs = (model.detector1(feats), model.detector2(feats))
        per_image = compute_loss(outputs, targets, imgs, reduction="none")
    return per_image[0], per_image[1]


def route_batch(model: nn.Module, router: nn.Module, imgs: torch.Tensor, targets: torch.Tensor,
                compute_loss: ComputeLoss) -> RouteBatch:
    """φ with gradients through ``router`` only; everything else computed once without them."""
    with torch.no_grad(), torch.autocast(device_type="cuda", enabled=imgs.is_cuda):
        feats, _ = model.backbone1(imgs)
    l1, l2 = detector_losses(model, feats, targets, imgs, compute_loss)
    return RouteBatch(router(router_inputs(model, feats)), l1, l2)


def to_batch(imgs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 loader images -> float in [0, 1] on ``device``; targets moved along."""
    return imgs.to(device, non_blocking=True).float() / 255.0, targets.to(device)


@torch.no_grad()
def collect(model: nn.Module, loader, compute_loss: ComputeLoss, device: torch.device,
            desc: str = "", show: bool = True) -> RouteBatch:
    """φ, L1 and L2 of every image ``loader`` yields (this process's share under DDP)."""
    parts = []
    for imgs, targets, _, _ in tqdm(loader, desc=desc, disable=not show, leave=False):
        imgs, targets = to_batch(imgs, targets, device)
        parts.append(route_batch(model, model.router, imgs, targets, compute_loss))
    if not parts:
        raise ValueError(f"{desc or 'loader'}: no images")
    return RouteBatch(*(torch.cat([getattr(p, k).float().cpu() for p in parts]) for k in RouteBatch._fields))


def gather(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``values`` of every process, concatenated (unchanged when not distributed)."""
    if info.rank < 0:
        return values
    out: list = [None] * info.world_size
    dist.all_gather_object(out, values.cpu())
    return torch.cat(out)


def offset_on(model: nn.Module, loader, compute_loss: ComputeLoss, device: torch.device,
              info: DistInfo) -> float:
    """Δ: median of L1 - L2 over all training images (one pass; every process gets the same)."""
    frozen_mode(model)
    res = collect(model, loader, compute_loss, device, "adaptive offset", info.is_main)
    return estimate_offset(gather(res.l1, info), gather(res.l2, info))


def routed_loss(res: RouteBatch, percent: float) -> float:
    """Mean detection loss when the ``percent``% highest-φ images take detector 2."""
    n_hard = int(round(len(res.phi) * percent / 100))
    hard = torch.zeros(len(res.phi), dtype=torch.bool)
    hard[torch.argsort(res.phi, descending=True)[:n_hard]] = True
    return float(torch.where(hard, res.l2, res.l1).mean())


@torch.inference_mode()
def difficulty_scores(model: nn.Module, loader, device: torch.device, desc: str = "φ") -> torch.Tensor:
    """φ of every image ``loader`` yields (eval mode), as a float32 CPU tensor."""
    model.eval()
    parts = [model.difficulty(imgs.to(device).float() / 255.0).float().cpu()
             for imgs, *_ in tqdm(loader, desc=desc, leave=False)]
    if not parts:
        raise ValueError(f"{desc}: no images")
    return torch.cat(parts)


@dataclass
class RouterState:
    """Counters a resumed run needs besides weights and optimizer."""

    epoch: int = 0  # next epoch to run
    best_fitness: float = float("-inf")


@dataclass
class RouterTrainer:
    """Trains ``model.router`` by ``opt.strategy`` for ``opt.epochs`` epochs; ``fit()`` runs the rest."""

    model: nn.Module
    opt: Any  # train_router.py options
    compute_loss: ComputeLoss
    delta: float
    train_loader: Any
    val_loader: Any  # None on processes other than the main one
    save_dir: Path
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    state: RouterState = field(default_factory=RouterState)
    costs: dict = field(default_factory=dict)  # route latencies and GFLOPs stored with the calibration

    def __post_init__(self) -> None:
        self.wdir = self.save_dir / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        params = freeze_detectors(self.model)
        self.optimizer = torch.optim.AdamW(params, lr=self.opt.lr, weight_decay=self.opt.weight_decay)
        if self.dist.is_main and not self.costs:
            self.costs = route_costs(self.model, self.opt.img_size)
            LOGGER.info("route costs at %d px: %s", self.opt.img_size,
                        ", ".join(f"{k} {v:.4g}" for k, v in self.costs.items()))
        self.router = DDP(self.model.router, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if self.dist.rank >= 0 else self.model.router

    def restore(self, extra: dict) -> None:
        """Optimizer and counters from a last.pt (the router weights came with the model)."""
        self.optimizer.load_state_dict(extra["optimizer"])
        self.state = RouterState(int(extra["epoch"]) + 1, float(extra["best_fitness"]))
        if self.dist.is_main:
            _truncate_csv(self.save_dir / "results.csv", self.state.epoch)

    def fit(self) -> dict:
        metrics: dict = {}
        for epoch in range(self.state.epoch, self.opt.epochs):
            t0 = time.time()
            loss = self._train_epoch(epoch)
            if self.dist.is_main:
                metrics = self._end_epoch(epoch, loss, time.time() - t0)
        return metrics

    def _train_epoch(self, epoch: int) -> float:
        frozen_mode(self.model)
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        total, n = 0.0, 0
        bar = tqdm(self.train_loader, desc=f"router epoch {epoch + 1}/{self.opt.epochs}",
                   disable=not self.dist.is_main, leave=False)
        for imgs, targets, paths, _ in bar:
            total += self._step(imgs, targets, paths)
            n += 1
            bar.set_postfix(loss=f"{total / n:.4f}")
        return total / max(n, 1)

    def _step(self, imgs: torch.Tensor, targets: torch.Tensor, paths) -> float:
        imgs, targets = to_batch(imgs, targets, self.device)
        res = route_batch(self.model, self.router, imgs, targets, self.compute_loss)
        loss = router_objective(self.opt.strategy, res.phi, res.l1, res.l2, self.delta,
                                keys=[Path(p).name for p in paths], seed=self.opt.seed)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"router loss became {loss.item()}; check the stage-1 weights")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the router's gradients over processes
        self.optimizer.step()
        return loss.item()

    # ---- end of epoch ------------------------------------------------------------------
    def _end_epoch(self, epoch: int, train_loss: float, seconds: float) -> dict:
        res = collect(frozen_mode(self.model), self.val_loader, self.compute_loss, self.device, "val φ")
        metrics = {"router_loss": float(router_objective("adaptive", res.phi, res.l1, res.l2, self.delta)),
                   "routed_loss": float(np.mean([routed_loss(res, k) for k in HARD_PERCENTS]))}
        fit = -metrics["routed_loss"]
        improved = fit > self.state.best_fitness
        self.state.best_fitness = max(fit, self.state.best_fitness)
        row = {"epoch": epoch, "train/loss": train_loss, "val/router_loss": metrics["router_loss"],
               "val/routed_loss": metrics["routed_loss"], "delta": self.delta,
               "lr": float(self.optimizer.param_groups[0]["lr"]), "seconds": seconds}
        _append_csv(self.save_dir / "results.csv", row)
        calib = calibration_record(res.phi, img_size=self.opt.img_size, **self.costs)
        self._save(epoch, improved, calib)
        LOGGER.info("router epoch %d/%d: %s", epoch + 1, self.opt.epochs,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        return {**metrics, "thresholds": calib, "phi": res.phi}

    def _save(self, epoch: int, improved: bool, calib: dict) -> None:
        meta = {"epoch": epoch, "stage": "router", "strategy": self.opt.strategy, "delta": self.delta,
                "run": str(self.save_dir)}
        extra = {"epoch": epoch, "best_fitness": self.state.best_fitness, "delta": self.delta,
                 "optimizer": self.optimizer.state_dict(), "train_opt": yaml_safe(vars(self.opt))}
        names = self.model.names
        save_checkpoint(self.wdir / "last.pt", self.model, names=names, thresholds=calib, meta=meta, extra=extra)
        if improved:
            save_checkpoint(self.wdir / "best.pt", self.model, names=names, thresholds=calib, meta=meta)
