"""DualRes router training on a frozen detector (DualRes Sec. 3.1.2), on cached samples.

Each image's thumbnail and detection losses at both resolutions are computed once
(:mod:`utils.routing.dualres_cache`); every epoch then runs only the router on the thumbnails:
logits -> binary Gumbel-Softmax decisions g (straight-through) -> the objective
mean[g L_high + (1 - g) L_low] + γ (p - θ)² (:mod:`utils.routing.gumbel`). Optimiser as in
the paper: SGD with Nesterov momentum 0.8, lr 3.2e-4 with a per-epoch cosine schedule, weight
decay 3.6e-4, 40 epochs. The paper gives no values for τ, γ, θ; the defaults (utils/defaults.py)
are τ = 1, θ = 0.5, γ = 10.

Loss normalisation (``normalize_losses``, on by default; not in the paper): both losses are
divided by s = mean |L_low - L_high| over the training images before entering the objective.
The objective's gradient is proportional to the detection losses' scale, which depends on the
detector, the loss gains and the image size (s = 0.022 for the demo model at 128 px), so
without it neither the learning rate nor γ means the same thing from one detector to the next;
with it, a typical image's gain is 1 and γ weighs the balance term against that.

Under torchrun only the router (as :class:`ThumbnailRouter`) is wrapped in DDP; every process
holds the gathered samples and trains on its share of each epoch's batches. The balance term
uses each process's own batch share p (the paper's "current batch").

After every epoch the main process scores the router on the validation samples, appends a row
to results.csv and writes ``last.pt`` (and ``best.pt`` when the validation loss-AUC improves)
with the calibration table of the validation φ (:func:`calibration_record`, route keys
``easy`` = low resolution and ``hard`` = high resolution, both including the router).
"""
from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.defaults import DUALRES
from utils.evaluation.metrics import auc_policy
from utils.routing.samples import epoch_batches
from utils.routing.calibration import calibration_record
from utils.routing.dualres_cache import DualResSamples
from utils.routing.gumbel import DualResLoss, dualres_objective, gumbel_sigmoid
from utils.routing.latency import route_costs
from utils.routing.loss import routed_loss
from utils.torch_utils import DistInfo, ddp_wrap
from utils.train.loop import EpochLoop, Progress, RunLog
from utils.weights.checkpoints import save_checkpoint

LOGGER = logging.getLogger("dydet.train_router")
SWEEP_PERCENTS = range(0, 101, 10)  # high-resolution shares of the validation loss curve
EVAL_CHUNK = 256  # thumbnails per router call when scoring


@dataclass
class DualResOptions:
    """Router training options (paper defaults for the optimiser; see the module doc for τ, γ, θ)."""

    epochs: int = DUALRES.epochs
    batch_size: int = DUALRES.batch_size  # total over all processes
    lr: float = DUALRES.lr
    momentum: float = DUALRES.momentum
    nesterov: bool = True
    weight_decay: float = DUALRES.weight_decay
    tau: float = DUALRES.tau  # Gumbel-Softmax temperature
    gamma: float = DUALRES.gamma  # balance weight γ
    normalize_losses: bool = True  # divide L_low, L_high by mean |L_low - L_high| of the training images
    theta: float = DUALRES.theta  # target share of high-resolution images
    seed: int = 0
    img_size: int = 640  # network input size (route costs, calibration record)
    latency_reps: int = 5  # batch-1 latency repetitions per route (0: GFLOPs only)


class ThumbnailRouter(nn.Module):
    """The router on cached thumbnails (what DDP wraps: the detector never runs in training)."""

    def __init__(self, router: nn.Module) -> None:
        super().__init__()
        self.router = router

    def forward(self, thumbs: torch.Tensor) -> torch.Tensor:
        return self.router.logits_from_thumbnail(thumbs)


def loss_scale(opt: DualResOptions, samples: DualResSamples) -> float:
    """The divisor of both losses: mean |L_low - L_high| of ``samples`` (1 when off or zero)."""
    s = float(samples.gain.abs().mean()) if opt.normalize_losses else 1.0
    return s if s > 0 else 1.0


@torch.no_grad()
def samples_phi(router: nn.Module, samples: DualResSamples, device: torch.device) -> torch.Tensor:
    """φ of every sample (router in eval mode), float32 on the CPU."""
    was_training = router.training
    router.eval()
    try:
        parts = [router.logits_from_thumbnail(samples.thumbs[i:i + EVAL_CHUNK].to(device).float() / 255.0)
                 for i in range(0, len(samples), EVAL_CHUNK)]
    finally:
        router.train(was_training)
    return torch.cat(parts).sigmoid().float().cpu()


def loss_curve_auc(phi: torch.Tensor, samples: DualResSamples) -> float:
    """AUC-Policy (DualRes Eq. 10) of -routed loss over the high share; nan when both ends are equal."""
    losses = [routed_loss(phi, samples.l_low, samples.l_high, k) for k in SWEEP_PERCENTS]
    try:
        return auc_policy([k / 100 for k in SWEEP_PERCENTS], [-v for v in losses])
    except ValueError:
        return float("nan")


@dataclass
class DualResTrainer(EpochLoop):
    """Trains ``model.router`` (a DualResModel's) for ``opt.epochs`` epochs; ``fit()`` runs the rest.

    ``epochs`` (default ``opt.epochs``) may be set lower to stop early; the cosine schedule
    always spans ``opt.epochs``.

    ``train`` holds every training image's samples (gathered over processes), ``val`` the
    validation images' (main process; None elsewhere, or to score on ``train``).
    """

    script = "train_router.py"  # what resumes a run
    epoch_bar = "dualres router"  # epochs on cached samples take a moment each: one bar over all of them

    model: nn.Module
    opt: DualResOptions
    train: DualResSamples
    val: DualResSamples | None
    save_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: DistInfo = field(default_factory=DistInfo)
    progress: Progress = field(default_factory=Progress)
    costs: dict | None = None  # calibration_record kwargs; measured on the main process when None
    record: dict | None = None  # the run's full options (train_router.py's), stored for --resume
    lineage: dict = field(default_factory=dict)  # training-image records carried into the checkpoints' meta

    def __post_init__(self) -> None:
        self.save_dir = Path(self.save_dir)
        self.wdir = self.save_dir / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.epochs, self.is_main = self.opt.epochs, self.dist.is_main
        self.log = RunLog(self.save_dir, tensorboard=False, title="dualres router epoch") if self.is_main else None
        self.loss_scale = loss_scale(self.opt, self.train)
        params = list(self.model.router.parameters())
        self.optimizer = torch.optim.SGD(params, lr=self.opt.lr, momentum=self.opt.momentum,
                                         nesterov=self.opt.nesterov, weight_decay=self.opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(self.opt.epochs, 1))
        if self.dist.is_main and self.costs is None:
            self.costs = route_costs(self.model, self.opt.img_size, self.opt.latency_reps)
            LOGGER.info("DualRes route costs at %d px (router included): %s", self.opt.img_size,
                        ", ".join(f"{k} {v:.4g}" for k, v in self.costs.items()))
        head = ThumbnailRouter(self.model.router)
        self.router = ddp_wrap(head, self.dist, self.device)

    # ---- resume ------------------------------------------------------------------------
    def restore(self, extra: Mapping) -> None:
        """Optimiser, scheduler, loss scale and counters from a last.pt (the router weights came with the model)."""
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        self.loss_scale = float(extra["loss_scale"])
        self.progress = Progress(int(extra["epoch"]) + 1, float(extra["best_fitness"]))
        if self.is_main:
            self.log.resume_at(self.progress.epoch)

    # ---- training ----------------------------------------------------------------------
    def noise_generator(self, epoch: int) -> torch.Generator:
        """Gumbel noise of ``epoch`` on this process: a pure function of (seed, epoch, rank)."""
        return torch.Generator().manual_seed((self.opt.seed * 1_000_003 + epoch) * 1009 + max(self.dist.rank, 0))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this process's batches: mean loss, detection loss, balance term, high share; the lr."""
        self.model.train()  # router in train mode; the detector stays frozen in eval mode
        per_rank = max(self.opt.batch_size // max(self.dist.world_size, 1), 1)
        batches = epoch_batches(len(self.train), per_rank, epoch, self.opt.seed, self.dist)
        gen, sums = self.noise_generator(epoch), np.zeros(4)
        for idx in batches:
            res = self.step(self.train.subset(idx), gen)
            sums += [float(v) for v in res]
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()  # per-epoch cosine
        mean = sums / max(len(batches), 1)
        return {**dict(zip(("loss", "detection", "balance", "high_share"), mean.tolist())), "lr": lr}

    def step(self, batch: DualResSamples, generator: torch.Generator | None = None) -> DualResLoss:
        """One SGD step of the router on a batch of samples; returns the objective's parts."""
        logits = self.router(batch.images(self.device))
        g = gumbel_sigmoid(logits, self.opt.tau, hard=True, generator=generator)
        s = self.loss_scale
        res = dualres_objective(g, batch.l_low.to(self.device) / s, batch.l_high.to(self.device) / s,
                                self.opt.gamma, self.opt.theta)
        if not torch.isfinite(res.loss):
            raise FloatingPointError(f"DualRes router loss became {res.loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        res.loss.backward()  # DDP averages the router's gradients over processes
        self.optimizer.step()
        return DualResLoss(*(t.detach() for t in res))

    # ---- end of epoch ------------------------------------------------------------------
    def score(self) -> tuple[torch.Tensor, dict[str, float]]:
        """φ of the scoring samples (val, else train) and the router's validation metrics."""
        samples = self.val if self.val is not None else self.train
        phi = samples_phi(self.model.router, samples, self.device)
        metrics = {"routed_loss": statistics.fmean(routed_loss(phi, samples.l_low, samples.l_high, k)
                                                   for k in range(10, 100, 10)),
                   "loss_auc": loss_curve_auc(phi, samples),
                   "high_share": float((phi > self.model.threshold).float().mean())}
        return phi, metrics

    def end_epoch(self, epoch: int, train_stats: dict, seconds: float) -> dict:
        """Score on the validation samples, log a row, save last.pt (and best.pt) with the calibration."""
        phi, metrics = self.score()
        fit = metrics["loss_auc"] if math.isfinite(metrics["loss_auc"]) else -metrics["routed_loss"]
        improved = self.progress.improved(fit)
        row = {"epoch": epoch, **{f"train/{k}": v for k, v in train_stats.items()},
               **{f"val/{k}": v for k, v in metrics.items()}, "loss_scale": self.loss_scale,
               "seconds": seconds}
        self.log.write(row, self.opt.epochs)
        samples = self.val if self.val is not None else self.train
        calib = calibration_record(phi, img_size=self.opt.img_size, images=samples.keys, **(self.costs or {}))
        self._save(epoch, improved, calib)
        return {**metrics, "thresholds": calib, "phi": phi}

    def _save(self, epoch: int, improved: bool, calib: dict) -> None:
        meta = {**self.lineage, "epoch": epoch, "stage": "dualres-router", "loss_scale": self.loss_scale,
                "run": str(self.save_dir)}
        extra = {"epoch": epoch, "best_fitness": self.progress.best_fitness, "loss_scale": self.loss_scale,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "train_opt": self.record if self.record is not None else asdict(self.opt)}
        kw = {"names": self.model.names, "img_size": self.opt.img_size, "thresholds": calib, "meta": meta}
        save_checkpoint(self.wdir / "last.pt", self.model, extra=extra, **kw)
        if improved:
            save_checkpoint(self.wdir / "best.pt", self.model, **kw)
