"""Devices, distributed set-up, EMA and timing helpers shared by the scripts."""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn


def select_device(device: str | int | torch.device | None = "") -> torch.device:
    """'cpu', '0', '0,1', 'cuda:1' or '' (CUDA 0 when available, else CPU) -> torch.device."""
    if isinstance(device, torch.device):
        return device
    spec = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    if spec in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    ids = [s for s in spec.split(",") if s]
    if not all(s.isdigit() for s in ids):
        raise ValueError(f"invalid --device {device!r}: use 'cpu', a CUDA index like '0', or '0,1'")
    if not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} requested but CUDA is not available here; use --device cpu")
    n = torch.cuda.device_count()
    bad = [i for i in ids if int(i) >= n]
    if bad:
        raise RuntimeError(f"--device {device}: CUDA device(s) {bad} not found ({n} available)")
    return torch.device(f"cuda:{ids[0]}")


@dataclass
class DistInfo:
    """Process placement under torchrun (rank -1 = not distributed)."""

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), world)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def device_for_rank(device: torch.device, info: DistInfo) -> torch.device:
    """Each DDP process on CUDA takes the GPU of its local rank."""
    if device.type == "cuda" and info.local_rank >= 0:
        return torch.device("cuda", info.local_rank)
    return device


@contextlib.contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """Let rank 0 do a job (e.g. build a label cache) before the other ranks."""
    if info.rank > 0:
        dist.barrier()
    yield
    if info.rank == 0:
        dist.barrier()


def ddp_wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel under torchrun (on its GPU when CUDA), else itself."""
    if info.rank < 0:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


class ModelEMA:
    """Exponential moving average of weights with a warm-up ramp (decay * (1 - exp(-updates / tau))).

    Entries that cannot change (frozen parameters, and the BatchNorm statistics of frozen
    layers) are left out of the average, so they stay bit-identical to the model's.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        bare = de_parallel(model)
        self.ema = copy.deepcopy(bare).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates
        self.frozen = _frozen_entries(bare)

    def _decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self._decay()
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point and k not in self.frozen:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def _frozen_entries(model: nn.Module) -> set[str]:
    """State-dict keys of frozen parameters and of the buffers of BatchNorms whose parameters are all frozen."""
    keys = set()
    for name, m in model.named_modules():
        params = dict(m.named_parameters(recurse=False))
        frozen = {k for k, p in params.items() if not p.requires_grad}
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and len(frozen) == len(params):
            frozen |= {k for k, _ in m.named_buffers(recurse=False)}
        keys |= {f"{name}.{k}" if name else k for k in frozen}
    return keys


def train_keep_frozen_bn(model: nn.Module) -> nn.Module:
    """``model.train()``, then every BatchNorm whose parameters are all frozen back to eval mode.

    A frozen layer must stay what it was: in train mode its BatchNorm would normalise with batch
    statistics and keep updating its running ones, so "frozen" weights would still drift.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """CUDA convolutions and matrix products in full fp32 inside the block (no TF32).

    cuDNN convolutions default to TF32 on Ampere and newer GPUs, whose 10-bit mantissa moves a
    detector's outputs by about 1e-3 relative: too much to compare a CUDA model with a CPU
    runtime. A no-op on the CPU.
    """
    cudnn = torch.backends.cudnn
    if not hasattr(cudnn, "conv"):  # torch < 2.9: the older switch
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
        return
    conv, mm = cudnn.conv, torch.backends.cuda.matmul
    old = conv.fp32_precision, mm.fp32_precision
    conv.fp32_precision = mm.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, mm.fp32_precision = old


def time_sync() -> float:
    """Wall time after pending CUDA work finishes."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def distributed_run(fn: Callable[..., Any], opt: Any, *args: Any) -> Any:
    """``fn(opt, device, dist_info, *args)`` inside the torchrun process group (if any), torn down after."""
    device = select_device(opt.device)
    info = init_distributed(device)
    try:
        return fn(opt, device_for_rank(device, info), info, *args)
    finally:
        if info.rank >= 0 and dist.is_initialized():
            dist.destroy_process_group()


def shared_run_dir(opt: Any, info: DistInfo) -> Path:
    """``opt.save_dir`` or the next free ``project/name``, decided on rank 0 and shared with all ranks."""
    from utils.paths import increment_path
    if getattr(opt, "save_dir", None):
        return Path(opt.save_dir)
    path = [str(increment_path(Path(opt.project) / opt.name, opt.exist_ok, mkdir=True))] if info.is_main else [None]
    if info.rank >= 0:
        dist.broadcast_object_list(path, src=0)
    opt.save_dir = path[0]
    Path(path[0], "weights").mkdir(parents=True, exist_ok=True)
    return Path(path[0])
