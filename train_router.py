"""Stage 2 of DynamicDet: train the router of a stage-1 dynamic model on its frozen detectors.

    python train_router.py --weights runs/train/exp/weights/best.pt --data data/demo/demo.yaml --img-size 192
    python train_router.py --weights dy-yolov7.pt --cfg dy-yolov7 --data coco.yaml     # official release
    python train_router.py --weights best.pt --data pets.yaml --strategy random     # baseline (paper Fig. 7)
    python train_router.py --resume runs/train_router/exp/weights/last.pt
    python train_router.py --weights best.pt --data pets.yaml --img-size 640 --calibrate   # only re-calibrate
    torchrun --nproc_per_node 2 train_router.py --weights best.pt --data pets.yaml --device cpu
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from models.zoo import zoo_cfg, zoo_entry
from utils.cli import script_main
from utils.data.config import hyp_for, load_data_config
from utils.data.datasets import create_dataloader
from utils.defaults import BATCH, IMG_SIZE, PROJECT, ROUTER, RUN_NAME, WORKERS
from utils.options import make_options, option, options_dict, parse_options
from utils.paths import increment_path
from utils.routing.calibration import calibration_record
from utils.routing.latency import route_costs
from utils.routing.loss import STRATEGIES, estimate_offset
from utils.routing.trainer import RouterLoop, RouterTrainer, difficulty_scores, samples_on
from utils.torch_utils import DistInfo, distributed_run, main_process_first, select_device, shared_run_dir
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.train.resume import STATE_KEYS, resume_options
from utils.weights.checkpoints import load_checkpoint, save_checkpoint
from utils.weights.downloads import attempt_download

LOGGER = logging.getLogger("dydet.train_router")


@dataclass
class Options:
    """train_router.py's options (flags: ``--img-size`` for ``img_size`` ...)."""

    weights: str = option("", "stage-1 dynamic checkpoint (ours, or an official one with --cfg)")
    cfg: str = option("", "architecture of an official DynamicDet checkpoint")
    data: str = option("", "data YAML (YOLOv7 or Ultralytics form)")
    hyp: str = option("", "hyperparameter YAML for the loss gains (default: by model family)")
    epochs: int = option(ROUTER.epochs)
    batch_size: int = option(BATCH["train_router"], "total batch size over all processes")
    img_size: int = option(IMG_SIZE)
    device: str = option("", "cpu, 0, 0,1 ... (default: CUDA 0 if available)")
    workers: int = option(WORKERS, "dataloader workers per process")
    lr: float = option(ROUTER.lr, "AdamW learning rate (constant)")
    weight_decay: float = option(ROUTER.weight_decay, "AdamW weight decay")
    strategy: str = option("adaptive", "adaptive: Eq. 12 (paper); random, ap: baselines of paper Fig. 7",
                           choices=list(STRATEGIES))
    project: str = option(PROJECT["train_router"])
    name: str = option(RUN_NAME)
    exist_ok: bool = option(False, "reuse an existing run directory")
    resume: bool | str = option(False, "resume last.pt (or the latest run)", nargs="?", const=True, type=str)
    seed: int = option(0, "shuffling and the 'random' strategy's labels")
    calibrate: bool = option(False, "no training: measure φ on the val images and the route costs on this "
                                    "machine, and write <run>/weights/calibrated.pt (the input is never modified)")
    save_dir: str | None = option(None, hidden=True)  # set by --resume / shared by torchrun processes


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Train the router with train_router.py's options (an :class:`Options` or keywords); returns paths and metrics."""
    opt = make_options(Options, options, **kwargs)
    if opt.calibrate:
        return calibrate(opt)
    resume_ckpt = None
    if opt.resume:
        opt, resume_ckpt, _ = resume_options(opt, STATE_KEYS | {"delta"}, script="train_router.py")
    return distributed_run(_train, opt, resume_ckpt)

def _train(opt: Options, device: torch.device, dist_info: DistInfo, resume_ckpt: Path | None) -> dict:
    torch.manual_seed(opt.seed + max(dist_info.rank, 0))
    model, extra = _dynamic_model(opt, device, resume_ckpt)
    data = load_data_config(opt.data)
    if len(data.names) != model.nc:
        raise ValueError(f"{opt.data} has {len(data.names)} classes, the model {model.nc}")
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp_for(model, opt.hyp), model.heads[0].nl, model.nc, opt.img_size))
    train_loader, val_loader = _loaders(opt, data, int(model.stride.max()), dist_info, model.nc)
    save_dir = shared_run_dir(opt, dist_info)
    train = samples_on(model, train_loader, compute_loss, device, dist_info, "train: detectors")
    val = samples_on(model, val_loader, compute_loss, device, DistInfo(), "val: detectors") if val_loader else None
    delta = float(extra["delta"]) if "delta" in extra else estimate_offset(train.l1, train.l2)
    LOGGER.info("adaptive offset Δ = median(L1 - L2) = %.5g over %d training images", delta, len(train))
    loop = RouterLoop(opt.epochs, opt.batch_size, opt.img_size, opt.lr, opt.weight_decay, opt.strategy, opt.seed)
    trainer = RouterTrainer(model, loop, delta, train, val, save_dir, device, dist_info, record=options_dict(opt))
    if resume_ckpt is not None:
        trainer.restore(extra)
    metrics = trainer.fit()
    return {"save_dir": save_dir, "last": save_dir / "weights" / "last.pt", "best": save_dir / "weights" / "best.pt",
            "delta": delta, "metrics": metrics}


def calibrate(opt: Options) -> dict:
    """Routing calibration of --weights on --data's val split, saved as a new checkpoint."""
    device = select_device(opt.device)
    model, _ = _dynamic_model(opt, device, None)
    data = load_data_config(opt.data, require=("val",))
    phi = difficulty_scores(model, _val_loader(opt, data, int(model.stride.max()), model.nc), device, "val φ")
    calib = calibration_record(phi, img_size=opt.img_size, **route_costs(model, opt.img_size))
    save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok)
    out = save_dir / "weights" / "calibrated.pt"
    meta = {"stage": "calibrated", "calibrated_from": str(opt.weights), "calibration_data": str(opt.data)}
    save_checkpoint(out, model, names=model.names, img_size=opt.img_size, thresholds=calib, meta=meta)
    LOGGER.info("calibration on %d images (route latencies easy %.1f ms, hard %.1f ms) saved to %s",
                len(phi), calib["latency_ms"]["easy"], calib["latency_ms"]["hard"], out)
    return {"save_dir": save_dir, "calibrated": out, "thresholds": calib}


def _dynamic_model(opt: Options, device: torch.device, resume_ckpt: Path | None) -> tuple[torch.nn.Module, dict]:
    """The stage-1 model from --weights (or the interrupted run's last.pt), checked to be dynamic."""
    path = resume_ckpt or opt.weights
    if not path:
        raise ValueError("give --weights: a stage-1 checkpoint of a dynamic (dy-*) model")
    if not Path(path).is_file() and zoo_entry(path) is None:
        raise FileNotFoundError(f"--weights: checkpoint {path} not found")
    path = attempt_download(path)  # zoo names: found locally or downloaded
    model, info = load_checkpoint(path, cfg=opt.cfg or zoo_cfg(path), device=device)
    if not getattr(model, "is_dynamic", False):
        raise ValueError(f"{path} holds a plain (non-dynamic) detector; train_router.py needs a Dy model "
                         "(a stage-1 checkpoint of a dy-* config)")
    return model, info["extra"] if resume_ckpt is not None else {}


def _loaders(opt, data, stride: int, dist_info: DistInfo, nc: int):
    """The training images (letterboxed, no augmentation: the router learns on the images it will see),
    this process's share, for the one pass that collects their samples; and val (main process only).

    Inference passes use twice the training batch (no gradients are kept).
    """
    per_rank = max(opt.batch_size // dist_info.world_size, 1)
    with main_process_first(dist_info):
        train_loader, _ = create_dataloader(data.train, opt.img_size, per_rank * 2, stride, augment=False,
                                            workers=opt.workers, prefix="train: ", rank=dist_info.rank,
                                            world_size=dist_info.world_size, nc=nc)
    return train_loader, _val_loader(opt, data, stride, nc) if dist_info.is_main else None


def _val_loader(opt, data, stride: int, nc: int):
    """Validation images in rect batches, the same for the per-epoch calibration and ``--calibrate``."""
    loader, _ = create_dataloader(data.val, opt.img_size, opt.batch_size * 2, stride, rect=True,
                                  workers=opt.workers, prefix="val: ", nc=nc)
    return loader


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__, done=lambda out: f"Results saved to {out['save_dir']}")


if __name__ == "__main__":
    sys.exit(main())
