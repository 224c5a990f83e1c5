"""Benchmark section: router-training throughput (stage 2) by batch size.

One optimisation step of :class:`utils.router_trainer.RouterTrainer` (frozen detectors and
their losses without gradients, the router with them, AdamW) on a generated demo dataset at the
benchmark's image size. Images are loaded once beforehand: the number is model and loss
compute, not data loading.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from data.make_demo_data import make_demo_dataset
from utils.benchmark_stats import router_metrics, summarize
from utils.benchmark_timing import interleaved
from utils.data_config import hyp_for, load_data_config
from utils.datasets import create_dataloader
from utils.loss import ComputeLoss, scale_loss_gains
from utils.router_trainer import RouterTrainer, frozen_mode

MAX_REPS = 3  # a batch-16 step at 640 px takes tens of seconds on a CPU


def batch_sizes(router_batch: int) -> list[int]:
    """Batch 1, train_router.py's default batch and ``router_batch``, ascending."""
    import train_router
    return sorted({1, int(train_router.parse_args([]).batch_size), int(router_batch)})


def router_section(bench) -> dict:
    """Median step time and images/s at each batch size, with the speed-up over batch 1."""
    import train_router
    sizes = batch_sizes(bench.opt.router_batch)
    reps, warmup = min(bench.opt.reps, MAX_REPS), min(bench.opt.warmup, 1)
    with tempfile.TemporaryDirectory(prefix="dydet-bench-router-") as tmp:
        trainer, batch = _trainer(bench, Path(tmp), max(sizes), train_router.parse_args([]))
        fns = {b: (lambda b=b: trainer._step(*_first(batch, b))) for b in sizes}
        times = interleaved(fns, reps, warmup)
    steps = {b: summarize(t) for b, t in times.items()}
    return {"status": "ok", "img_size": bench.img_size, "steps": steps, "metrics": router_metrics(steps)}


def _trainer(bench, tmp: Path, n: int, opt) -> tuple[RouterTrainer, tuple]:
    """A RouterTrainer on a copy of the benchmark model, and one batch of ``n`` demo images."""
    size = bench.img_size
    data = load_data_config(make_demo_dataset(tmp / "demo", n_train=n, n_val=1, img_size=max(size, 64), seed=0))
    model = copy.deepcopy(bench.model)
    stride = int(model.stride.max())
    loader, _ = create_dataloader(data.train, size, n, stride, workers=0, nc=model.nc, cache_dir=tmp)
    imgs, targets, paths, _ = next(iter(loader))
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp_for(model), model.heads[0].nl, model.nc, size))
    opt.img_size = size
    trainer = RouterTrainer(model, opt, compute_loss, 0.0, None, None, tmp / "run", bench.device,
                            costs={"unused": 0.0})  # non-empty: skips the route-latency calibration
    frozen_mode(model)
    return trainer, (imgs, targets, list(paths))


def _first(batch: tuple, b: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The first ``b`` images of a loader batch, with their targets."""
    imgs, targets, paths = batch
    return imgs[:b], targets[targets[:, 0] < b], paths[:b]
