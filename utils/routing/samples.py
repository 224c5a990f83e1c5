"""A table of per-image training samples for a router, collected once over a loader.

Both routers of this repo train on frozen detectors, so what they need of each image is fixed
and computed in one pass: DynamicDet's router its pooled features and both detectors' losses
(:mod:`utils.routing.dynamicdet_cache`), DualRes's router its thumbnail and the losses at both
resolutions (:mod:`utils.routing.dualres_cache`). :class:`SampleTable` holds such columns (one
tensor row per image) and the image keys; :func:`collect` fills one, :meth:`SampleTable.gather`
joins the shares of several processes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from tqdm import tqdm

from utils.torch_utils import DistInfo

T = TypeVar("T", bound="SampleTable")


class SampleTable:
    """Base of dataclasses holding tensor columns with one row per image and ``keys: list[str]``,
    the image paths (declared last, after the columns)."""

    keys: list[str]

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "keys"]

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self: T, idx: torch.Tensor) -> T:
        """The samples at positions ``idx`` (in that order)."""
        rows = {c: getattr(self, c)[idx] for c in self.columns()}
        return type(self)(keys=[self.keys[i] for i in idx.tolist()], **rows)

    def gather(self: T, info: DistInfo) -> T:
        """Every process's samples in one table, each image once, ordered by key (the same on all ranks)."""
        shares: list = [None] * info.world_size if info.rank >= 0 else [self]
        if info.rank >= 0:
            dist.all_gather_object(shares, self)
        rows: dict[str, tuple[SampleTable, int]] = {}
        for share in shares:
            for i, key in enumerate(share.keys):
                rows.setdefault(key, (share, i))  # DistributedSampler pads a share with repeats
        order = sorted(rows)
        pick = [rows[k] for k in order]
        return type(self)(keys=order, **{c: torch.stack([getattr(s, c)[i] for s, i in pick]) for c in self.columns()})


def collect(cls: type[T], loader, batch_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
            device: torch.device, desc: str = "", show: bool = True) -> T:
    """``cls`` from ``batch_fn(images in [0, 1], targets)`` -> columns, over every batch ``loader``
    yields (this process's share under DDP); the rows are kept on the CPU."""
    parts, keys = [], []
    for imgs, targets, paths, _ in tqdm(loader, desc=desc, disable=not show, leave=False):
        x = imgs.to(device, non_blocking=True).float() / 255.0
        parts.append([t.cpu() for t in batch_fn(x, targets.to(device))])
        keys += [str(p) for p in paths]
    if not parts:
        raise ValueError(f"{desc or 'loader'}: no images")
    return cls(keys=keys, **dict(zip(cls.columns(), (torch.cat(t) for t in zip(*parts)))))


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, info: DistInfo,
                  min_samples: int = 0) -> list[torch.Tensor]:
    """This process's batches of sample positions for ``epoch``: a fresh shuffle of all ``n``,
    repeated (each pass shuffled anew) until the epoch holds at least ``min_samples``.

    Under DDP the permutation is padded (with its first entries) to a multiple of the world size
    and split round-robin, as ``DistributedSampler`` does, so every process takes the same
    number of steps.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    passes = max(1, -(-min_samples // n)) if n else 1
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(passes)])
    if info.rank >= 0:
        total = -(-len(order) // info.world_size) * info.world_size
        order = order.repeat(-(-total // len(order)))[:total][info.rank::info.world_size]
    return list(torch.split(order, max(batch_size, 1)))


def epochs_for(steps: int, n: int, batch_size: int, min_samples: int, min_epochs: int) -> int:
    """Epochs that give ``steps`` optimizer steps (at least ``min_epochs``) when an epoch passes
    over ``max(n, min_samples)`` samples in batches of ``batch_size`` (see :func:`epoch_batches`)."""
    passes = max(1, -(-min_samples // n)) if n else 1
    per_epoch = -(-n * passes // max(batch_size, 1))
    return max(min_epochs, -(-steps // max(per_epoch, 1)))
