"""Train a detector on a YOLO-format dataset (for dynamic models: stage 1, both detectors jointly).

    python train.py --cfg yolov7-tiny --data data/demo/demo.yaml --img-size 320 --epochs 50
    python train.py --cfg dy-yolov7 --weights yolov7.pt --data coco.yaml        # warm start
    python train.py --resume runs/train/exp/weights/last.pt
    torchrun --nproc_per_node 2 train.py --cfg dy-yolov7-tiny --data ... --device cpu
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import yaml

from models.yolo import build_model
from utils.weights.checkpoints import CheckpointError, load_checkpoint
from utils.cli import script_main
from utils.data.config import hyp_for, load_data_config
from utils.data.datasets import create_dataloader
from utils.paths import latest_checkpoint
from utils.torch_utils import (
    DistInfo,
    de_parallel,
    distributed_run,
    main_process_first,
    merge_options,
    shared_run_dir,
)
from utils.train.trainer import Trainer, yaml_safe

LOGGER = logging.getLogger("dydet.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="", help="model config (cfg/*.yaml name or path)")
    p.add_argument("--weights", default="", help="initial weights: ours, DynamicDet or YOLOv7 release")
    p.add_argument("--data", default="", help="data YAML (YOLOv7 or Ultralytics form)")
    p.add_argument("--hyp", default="", help="hyperparameter YAML (default: by model family)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16, help="total batch size over all processes")
    p.add_argument("--img-size", type=int, default=640, help="train and val image size")
    p.add_argument("--device", default="", help="cpu, 0, 0,1 ... (default: CUDA 0 if available)")
    p.add_argument("--workers", type=int, default=8, help="dataloader workers per process")
    p.add_argument("--project", default="runs/train")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true", help="reuse an existing run directory")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume last.pt (or the latest run)")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N backbone layers")
    p.add_argument("--freeze-detector1", action="store_true",
                   help="dynamic models: keep detector 1 (backbone 1, neck, head 1, BN statistics) fixed and train "
                        "the composite link, backbone 2 and head 2 only (adds a hard route to a trained detector)")
    p.add_argument("--adam", action="store_true", help="AdamW instead of SGD")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (CUDA only)")
    p.add_argument("--cache", nargs="?", const="ram", default=False, help="cache images in RAM")
    p.add_argument("--single-cls", action="store_true", help="train all classes as one")
    p.add_argument("--save-period", type=int, default=-1, help="also save every N epochs")
    p.add_argument("--noval", action="store_true", help="validate only after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="keep the config's anchors")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    return p.parse_args(argv)


def run(**kwargs) -> dict:
    """Train with train.py's options given as keyword arguments; returns paths and final metrics."""
    opt = merge_options(parse_args, kwargs, "train")
    resume_ckpt = None
    if opt.resume:
        opt, resume_ckpt = _resume_options(opt)
    return distributed_run(_train, opt, resume_ckpt)


def _train(opt: argparse.Namespace, device: torch.device, dist_info: DistInfo, resume_ckpt: Path | None) -> dict:
    torch.manual_seed(opt.seed + max(dist_info.rank, 0))
    save_dir = shared_run_dir(opt, dist_info)
    data = load_data_config(opt.data)
    names = ["item"] if opt.single_cls else data.names
    model, extra = _model(opt, names, device, resume_ckpt)
    hyp = extra.get("hyp") or hyp_for(model, opt.hyp)
    hyp["label_smoothing"] = opt.label_smoothing
    _freeze(de_parallel(model), opt.freeze, opt.freeze_detector1)
    if opt.sync_bn and dist_info.rank >= 0:
        model = _sync_bn(model, device)
    stride = int(de_parallel(model).stride.max())
    train_loader, train_set, val_loader = _loaders(opt, data, hyp, stride, dist_info, len(names))
    if dist_info.is_main and resume_ckpt is None:
        _prepare_run(opt, hyp, model, train_set, names, save_dir)
    trainer = Trainer(model, hyp, opt, train_loader, _validator(val_loader, names, save_dir, opt),
                      save_dir, device, dist_info, names)
    if resume_ckpt is not None:
        trainer.restore(extra)
    try:
        metrics = trainer.fit()
    finally:
        trainer.close()
    if dist_info.is_main and opt.plots:
        _plot_results(save_dir)
    return {"save_dir": save_dir, "last": save_dir / "weights" / "last.pt",
            "best": save_dir / "weights" / "best.pt", "metrics": metrics}


def _resume_options(opt: argparse.Namespace) -> tuple[argparse.Namespace, Path]:
    """Options of the interrupted run, and its last.pt."""
    ckpt = Path(opt.resume) if isinstance(opt.resume, str) else latest_checkpoint(opt.project)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {ckpt} not found")
    from utils.weights.checkpoints import read_checkpoint
    extra = read_checkpoint(ckpt)
    if "train_opt" not in extra or "optimizer" not in extra:
        raise CheckpointError(f"--resume: {ckpt} has no training state (use a run's weights/last.pt)")
    if int(extra["epoch"]) + 1 >= int(extra["train_opt"]["epochs"]):
        raise ValueError(f"--resume: {ckpt} is from a run that already finished all its epochs")
    resumed = argparse.Namespace(**{**vars(parse_args([])), **extra["train_opt"]})
    resumed.resume, resumed.device = str(ckpt), opt.device or resumed.device
    resumed.save_dir = str(ckpt.resolve().parents[1])
    LOGGER.info("resuming %s from epoch %d", resumed.save_dir, int(extra["epoch"]) + 1)
    return resumed, ckpt


def _model(opt, names: list[str], device: torch.device, resume_ckpt: Path | None) -> tuple[torch.nn.Module, dict]:
    """A fresh model, one initialised from --weights, or the model of an interrupted run."""
    if resume_ckpt is not None:
        model, info = load_checkpoint(resume_ckpt, device=device)
        return model, info["extra"]
    if not opt.weights:
        if not opt.cfg:
            raise ValueError("give --cfg (architecture) and/or --weights")
        return build_model(opt.cfg, names=names).to(device), {}
    model, info = load_checkpoint(opt.weights, cfg=opt.cfg or None)
    if model.nc != len(names) or list(model.names) != list(names):
        from utils.weights.checkpoints import transfer_weights
        fresh = build_model(model.cfg, names=names)
        reinit = transfer_weights(model, fresh)
        LOGGER.info("transfer from %s: re-initialised %d class-dependent head tensors", opt.weights, len(reinit))
        model = fresh
    return model.to(device), {}


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
    (save_dir / "hyp.yaml").write_text(yaml.safe_dump(yaml_safe(hyp), sort_keys=False))
    (save_dir / "opt.yaml").write_text(yaml.safe_dump(yaml_safe(vars(opt)), sort_keys=False))


def _validator(val_loader, names, save_dir: Path, opt):
    if val_loader is None:
        return None
    import test as test_script
    gflops: dict = {}

    def validate(model, epoch: int, final: bool) -> dict:
        if not gflops:
            gflops.update(test_script.route_gflops_or_empty(model, opt.img_size))
        return test_script.run(data=None, model=model, dataloader=val_loader, names=names, save_dir=save_dir,
                               plots=final and opt.plots, time_routed=False, img_size=opt.img_size,
                               conf_thres=0.001, iou_thres=0.65, gflops=gflops)
    return validate


def _plot_results(save_dir: Path) -> None:
    from utils.evaluation.plots import plot_results
    if (save_dir / "results.csv").exists():
        plot_results(save_dir / "results.csv")


def main(argv: list[str] | None = None) -> int:
    return script_main(parse_args, run, argv,
                       done=lambda out: f"Results saved to {out['save_dir']}" if out["save_dir"] else None)


if __name__ == "__main__":
    sys.exit(main())
