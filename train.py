"""Train a detector on a YOLO-format dataset (for dynamic models: stage 1, both detectors jointly).

    python train.py --cfg yolov7-tiny --data data/demo/demo.yaml --img-size 320 --epochs 50
    python train.py --cfg dy-yolov7 --weights yolov7.pt --data coco.yaml        # warm start
    python train.py --resume runs/train/exp/weights/last.pt
    torchrun --nproc_per_node 2 train.py --cfg dy-yolov7-tiny --data ... --device cpu

``--resume`` after a crash or a SIGKILL continues from the last finished epoch. A single-process
run with ``--workers 0`` on CPU then ends bit-identically to an uninterrupted one (the random
state is stored in last.pt, utils/train/rng.py); with workers or under torchrun it continues
correctly but draws other augmentations.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from models.flops import model_summary
from models.yolo import build_model
from utils.cli import script_main
from utils.data.config import hyp_for, load_data_config
from utils.data.datasets import create_dataloader
from utils.data.image_set import image_set_record, merge_records
from utils.defaults import BATCH, IMG_SIZE, VAL, WORKERS
from utils.evaluation.evaluate import EvalResult, evaluate, gflops_or_empty
from utils.io import atomic_write_text
from utils.options import make_options, option, options_dict, parse_options, plain_dict
from utils import option_groups as groups
from utils.torch_utils import DistInfo, de_parallel, distributed_run, main_process_first, shared_run_dir
from utils.train.resume import resume_options
from utils.train.rng import seed_all
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.train.trainer import Trainer, TrainLoop
from utils.train.validation import validation_losses
from utils.runtime.openvino_model import is_openvino
from utils.validate import check_img_size
from utils.weights.backends import is_onnx, own_img_size
from utils.weights.checkpoints import load_checkpoint, transfer_weights
from utils.weights.downloads import attempt_download

LOGGER = logging.getLogger("dydet.train")


@dataclass
class Options:
    """train.py's options (flags: ``--img-size`` for ``img_size`` ...)."""

    cfg: str = option("", "model config (cfg/*.yaml name or path)")
    weights: str = option("", "initial weights: ours, DynamicDet or YOLOv7 release")
    data: str = option("", "data YAML (YOLOv7 or Ultralytics form)")
    hyp: str = option("", "hyperparameter YAML (default: by model family)")
    epochs: int = option(300)
    batch_size: int = option(BATCH["train"], "total batch size over all processes")
    img_size: int = option(IMG_SIZE, "train and val image size")
    device: str = groups.device()
    workers: int = option(WORKERS, "dataloader workers per process")
    project: str = groups.project("train")
    name: str = groups.name()
    exist_ok: bool = groups.exist_ok()
    resume: bool | str = option(False, "resume last.pt (or the latest run)", nargs="?", const=True, type=str)
    freeze: int = option(0, "freeze the first N backbone layers")
    freeze_detector1: bool = option(
        False, "dynamic models: keep detector 1 (backbone 1, neck, head 1, BN statistics) fixed and train the "
               "composite link, backbone 2 and head 2 only (adds a hard route to a trained detector)")
    adam: bool = option(False, "AdamW instead of SGD")
    sync_bn: bool = option(False, "SyncBatchNorm under DDP (CUDA only)")
    cache: bool | str = option(False, "cache images in RAM", nargs="?", const="ram", type=str)
    single_cls: bool = option(False, "train all classes as one")
    save_period: int = option(-1, "also save every N epochs")
    noval: bool = option(False, "validate only after the final epoch")
    noautoanchor: bool = option(False, "keep the config's anchors")
    plots: bool = option(True, "no plots", flag="--no-plots")
    seed: int = option(0)
    label_smoothing: float = option(0.0)
    save_dir: str | None = option(None, hidden=True)  # set by --resume / shared by torchrun processes


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Train with train.py's options (an :class:`Options` or keywords); returns paths and final metrics."""
    opt = make_options(Options, options, **kwargs)
    resume_ckpt = None
    if opt.resume:
        opt, resume_ckpt, _ = resume_options(opt, script="train.py")
    _check_start(opt)
    return distributed_run(_train, opt, resume_ckpt)


def _check_start(opt: Options) -> None:
    """What must hold before a run folder is claimed (errors a user can fix, one line each)."""
    if not opt.data:
        raise ValueError("give --data: a data YAML (YOLOv7 or Ultralytics form)")
    if opt.weights and (is_onnx(opt.weights) or is_openvino(opt.weights)):
        raise ValueError(f"{opt.weights} is an export, which cannot be trained; pass the PyTorch checkpoint "
                         "it was exported from")


def _train(opt: Options, device: torch.device, dist_info: DistInfo, resume_ckpt: Path | None) -> dict:
    seed_all(opt.seed + max(dist_info.rank, 0))
    data = load_data_config(opt.data)
    names = ["item"] if opt.single_cls else data.names
    model, extra, prior = _model(opt, names, device, resume_ckpt)
    hyp = extra.get("hyp") or hyp_for(model, opt.hyp)
    hyp["label_smoothing"] = opt.label_smoothing
    _freeze(de_parallel(model), opt.freeze, opt.freeze_detector1)
    if opt.sync_bn and dist_info.rank >= 0:
        model = _sync_bn(model, device)
    stride = int(de_parallel(model).stride.max())
    opt.img_size = check_img_size(opt.img_size, stride)  # rounded up to the stride, with a warning
    train_loader, train_set, val_loader = _loaders(opt, data, hyp, stride, dist_info, len(names))
    save_dir = shared_run_dir(opt, dist_info)  # claimed once the run can start
    if dist_info.is_main:
        _announce(de_parallel(model), opt.img_size, save_dir)
    if dist_info.is_main and resume_ckpt is None:
        _prepare_run(opt, hyp, model, train_set, names, save_dir)
    loop = TrainLoop(opt.epochs, opt.batch_size, opt.img_size, adam=opt.adam, noval=opt.noval, plots=opt.plots,
                     save_period=opt.save_period)
    trainer = Trainer(model, hyp, loop, train_loader, _validator(val_loader, names, save_dir, opt, hyp, device),
                      save_dir, device, dist_info, names, record=options_dict(opt),
                      trained_on=merge_records(image_set_record(train_set.im_files), prior.get("trained_on")))
    if resume_ckpt is not None:
        trainer.restore(extra)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if dist_info.is_main and result is not None:
        print(result.table(names, verbose=True))  # the final validation, per class
    if dist_info.is_main and opt.plots:
        _plot_results(save_dir)
    return {"save_dir": save_dir, "last": save_dir / "weights" / "last.pt",
            "best": save_dir / "weights" / "best.pt", "metrics": result.to_dict() if result else {}}

def _model(opt, names: list[str], device: torch.device, resume_ckpt: Path | None
           ) -> tuple[torch.nn.Module, dict, dict]:
    """A fresh model, one initialised from --weights, or the model of an interrupted run; with the
    checkpoint's training entries and its meta (empty for a fresh model)."""
    if resume_ckpt is not None:
        model, info = load_checkpoint(resume_ckpt, device=device)
        return model, info["extra"], info["meta"]
    if not opt.weights:
        if not opt.cfg:
            raise ValueError("give --cfg (architecture) and/or --weights")
        return build_model(opt.cfg, names=names).to(device), {}, {}
    model, info = load_checkpoint(attempt_download(opt.weights), cfg=opt.cfg or None)  # zoo names: downloaded
    own = own_img_size(info)
    if own and own != opt.img_size:  # fine-tuning keeps YOLO's 640 default, but says so
        LOGGER.warning("warning: training at --img-size %d; %s was trained at %d px", opt.img_size, opt.weights, own)
    if model.nc != len(names) or list(model.names) != list(names):
        fresh = build_model(model.cfg, names=names)
        reinit = transfer_weights(model, fresh)
        LOGGER.info("transfer from %s: re-initialised %d class-dependent head tensors", opt.weights, len(reinit))
        model = fresh
    return model.to(device), {}, info["meta"]


def _freeze(model: torch.nn.Module, n: int, detector1: bool = False) -> None:
    """Freeze the first ``n`` backbone layers (of both backbones), or all of detector 1.

    The router stays frozen in stage 1. Frozen layers also keep their BatchNorm statistics
    (the trainer leaves their BN in eval mode).
    """
    if detector1 and not model.is_dynamic:
        raise ValueError("--freeze-detector1 needs a dynamic (dy-*) model")
    prefixes = [f"model.{i}." for i in range(n)]
    if model.is_dynamic:
        prefixes = [f"model_b.{i}." for i in range(n)] + [f"model_b2.{model.b2_index[i]}." for i in range(n)
                                                            if i in model.b2_index] + ["router."]
        prefixes += ["model_b.", "model_h."] if detector1 else []
    for name, p in model.named_parameters():
        if any(name.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)


def _sync_bn(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type != "cuda":
        LOGGER.warning("--sync-bn needs CUDA; ignored on %s", device)
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)


def _loaders(opt, data, hyp, stride, dist_info, nc):
    per_rank = max(opt.batch_size // dist_info.world_size, 1)
    nc_check = None if opt.single_cls else nc
    with main_process_first(dist_info):
        train_loader, train_set = create_dataloader(
            data.train, opt.img_size, per_rank, stride, hyp=hyp, augment=True, cache_images=opt.cache,
            workers=opt.workers, prefix="train: ", rank=dist_info.rank, world_size=dist_info.world_size,
            shuffle=True, seed=opt.seed, nc=nc_check)
    val_loader = None
    if dist_info.is_main:
        val_loader, val_set = create_dataloader(data.val, opt.img_size, per_rank * 2, stride, rect=True, pad=0.0,
                                                cache_images=opt.cache, workers=opt.workers, prefix="val: ",
                                                nc=nc_check)
        if opt.single_cls:
            _single_class(val_set)
    if opt.single_cls:
        _single_class(train_set)
    return train_loader, train_set, val_loader


def _single_class(dataset) -> None:
    for lab in dataset.labels:
        lab[:, 0] = 0


def _prepare_run(opt, hyp, model, train_set, names, save_dir: Path) -> None:
    """Anchor check, label plot and the run's hyp.yaml / opt.yaml."""
    import numpy as np
    labels = np.concatenate([lab for lab in train_set.labels if len(lab)], 0) if train_set.labels else np.zeros((0, 5))
    if not opt.noautoanchor and not opt.weights:
        from utils.train.autoanchor import check_anchors
        check_anchors(de_parallel(model), [lab[:, 3:5] for lab in train_set.labels], opt.img_size,
                      thr=hyp.get("anchor_t", 4.0), shapes=train_set.shapes_wh)
    if opt.plots and len(labels):
        from utils.evaluation.plots import plot_labels
        plot_labels(labels, names, save_dir / "labels.jpg")
    atomic_write_text(save_dir / "hyp.yaml", yaml.safe_dump(plain_dict(hyp), sort_keys=False))
    atomic_write_text(save_dir / "opt.yaml", yaml.safe_dump(options_dict(opt), sort_keys=False))


def _announce(model: torch.nn.Module, img_size: int, save_dir: Path) -> None:
    """The run folder and what is trained, before the first epoch."""
    s = model_summary(model, img_size)
    routes = ", ".join(f"{route} {g:.2f}" for route, g in s["gflops"].items())
    LOGGER.info("run folder: %s", save_dir)
    LOGGER.info("%s: %s parameters, GFLOPs at %d px: %s", model.cfg.get("name", "model"), f"{s['params']:,}",
                img_size, routes)


def _validator(val_loader, names: list[str], save_dir: Path, opt: Options, hyp: dict, device: torch.device):
    """Scores the EMA model on the validation images after an epoch (plots after the last one),
    with its validation losses."""
    if val_loader is None:
        return None
    gflops: dict = {}

    def validate(model: torch.nn.Module, epoch: int, final: bool) -> EvalResult:
        if not gflops:
            gflops.update(gflops_or_empty(model, opt.img_size))
        result = evaluate(model, val_loader, names, conf_thres=VAL.conf_thres, iou_thres=VAL.iou_thres,
                          img_size=opt.img_size, gflops=gflops, time_routed=False,
                          plot_dir=save_dir if final and opt.plots else None)
        gains = scale_loss_gains(hyp, model.heads[0].nl, model.nc, opt.img_size)
        result.losses = validation_losses(model, val_loader, ComputeLoss(model, gains), device)
        return result
    return validate


def _plot_results(save_dir: Path) -> None:
    from utils.evaluation.plots import plot_results
    if (save_dir / "results.csv").exists():
        plot_results(save_dir / "results.csv")


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__,
                       done=lambda out: f"Results saved to {out['save_dir']}" if out["save_dir"] else None)


if __name__ == "__main__":
    sys.exit(main())
