"""Benchmark section: router-training throughput (stage 2) by batch size.

Router training has two parts (:mod:`utils.routing.dynamicdet_cache`): one pass of the frozen detectors
over the images, which collects each image's pooled router input and both detectors' losses,
and then the epochs, whose optimisation steps (router forward and backward, AdamW) run on those
samples. Both are timed on a generated demo dataset at the benchmark's image size, with the
images loaded beforehand: ``steps`` per training batch size (the training loop's images/s and
its speed-up over batch 1), and ``collect`` (the one-off pass) at batch 1 and at the largest
batch.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from data.make_demo_data import make_demo_dataset
from utils.benchmark.stats import router_metrics, summarize
from utils.benchmark.timing import interleaved
from utils.data.config import hyp_for, load_data_config
from utils.data.datasets import create_dataloader
from utils.defaults import BATCH, ROUTER
from utils.routing.dynamicdet_cache import RouterSamples, collect_samples
from utils.routing.dynamicdet_trainer import RouterLoop, RouterTrainer, frozen_mode
from utils.train.loss import ComputeLoss, scale_loss_gains

MAX_COLLECT_REPS = 3  # a batch-16 pass at 640 px takes tens of seconds on a CPU


def batch_sizes(router_batch: int) -> list[int]:
    """Batch 1, train_router.py's default batch and ``router_batch``, ascending."""
    return sorted({1, BATCH["train_router"], int(router_batch)})


def router_section(bench) -> dict:
    """Median step time and images/s at each batch size, the speed-up over batch 1, and the pass."""
    if not hasattr(bench.model, "backbone1"):
        return {"status": "skipped: router-training throughput is measured for DynamicDet routers only"}
    sizes = batch_sizes(bench.opt.router_batch)
    n = max(sizes)
    with tempfile.TemporaryDirectory(prefix="dydet-bench-router-") as tmp:
        model, batch, compute_loss = _setup(bench, Path(tmp), n)
        collect = {b: (lambda b=b: collect_samples(model, [_first(batch, b)], compute_loss, bench.device, show=False))
                   for b in sorted({1, n})}
        pass_times = interleaved(collect, min(bench.opt.reps, MAX_COLLECT_REPS), min(bench.opt.warmup, 1))
        samples = collect[n]()
        loop = RouterLoop(epochs=1, batch_size=BATCH["train_router"], img_size=bench.img_size, lr=ROUTER.lr,
                          weight_decay=ROUTER.weight_decay)
        trainer = RouterTrainer(model, loop, 0.0, samples, None, Path(tmp) / "run", bench.device,
                                costs={"unused": 0.0})  # non-empty: skips the route-latency calibration
        fns = {b: (lambda b=b: trainer.step(_rows(samples, b))) for b in sizes}
        times = interleaved(fns, max(bench.opt.reps, 5), max(bench.opt.warmup, 1))
    steps = {b: summarize(t) for b, t in times.items()}
    passes = {b: summarize(t) for b, t in pass_times.items()}
    return {"status": "ok", "img_size": bench.img_size, "steps": steps, "collect": passes,
            "metrics": router_metrics(steps, passes)}


def _setup(bench, tmp: Path, n: int) -> tuple[torch.nn.Module, tuple, ComputeLoss]:
    """A frozen-mode copy of the benchmark model, one loader batch of ``n`` demo images, the loss."""
    size = bench.img_size
    data = load_data_config(make_demo_dataset(tmp / "demo", n_train=n, n_val=1, img_size=max(size, 64), seed=0))
    model = frozen_mode(copy.deepcopy(bench.model))
    loader, _ = create_dataloader(data.train, size, n, int(model.stride.max()), workers=0, nc=model.nc,
                                  cache_dir=tmp)
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp_for(model), model.heads[0].nl, model.nc, size))
    return model, next(iter(loader)), compute_loss


def _first(batch: tuple, b: int) -> tuple:
    """The first ``b`` images of a loader batch, with their targets, paths and shapes."""
    imgs, targets, paths, shapes = batch
    return imgs[:b], targets[targets[:, 0] < b], paths[:b], shapes[:b]


def _rows(samples: RouterSamples, b: int) -> RouterSamples:
    return samples.subset(torch.arange(b) % len(samples))
