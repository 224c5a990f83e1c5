"""Train a router on frozen detectors: DynamicDet's (which detector) or DualRes's (which input size).

    python train_router.py --weights runs/train/exp/weights/best.pt --data data/demo/demo.yaml --img-size 192
    python train_router.py --weights dy-yolov7.pt --cfg dy-yolov7 --data coco.yaml     # official release
    python train_router.py --weights best.pt --data pets.yaml --strategy random     # baseline (paper Fig. 7)
    python train_router.py --resume runs/train_router/exp/weights/last.pt
    python train_router.py --weights best.pt --data pets.yaml --img-size 640 --calibrate   # only re-calibrate
    torchrun --nproc_per_node 2 train_router.py --weights best.pt --data pets.yaml --device cpu
    python train_router.py --router dualres --weights plain.pt --data pets.yaml       # DualRes around any detector
    python train_router.py --router dualres --weights other.pt --router-from dualres.pt --data pets.yaml

``--resume`` after a crash or a SIGKILL ends, on CPU, bit-identically to an uninterrupted run: the
router's batches and noise are pure functions of (seed, epoch) and the samples are recollected
from the frozen detectors without augmentation.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from models.dualres import DualResModel
from models.resolution_router import ROUTER_KINDS
from models.zoo import zoo_cfg, zoo_entry
from utils.cli import script_main
from utils.data.config import hyp_for, load_data_config
from utils.data.datasets import create_dataloader
from utils.defaults import BATCH, DUALRES, ROUTER, WORKERS
from utils.evaluation.evaluate import evaluate
from utils.options import make_options, option, options_dict, parse_options
from utils import option_groups as groups
from utils.paths import increment_path
from utils.routing.calibration import calibration_record
from utils.routing.dualres_cache import collect_samples as collect_dualres
from utils.routing.dualres_setup import attach_router, detector_loss, wrap_detector
from utils.routing.dualres_trainer import DualResOptions, DualResTrainer
from utils.routing.latency import route_costs
from utils.routing.loss import STRATEGIES, estimate_offset, gain_scale
from utils.routing.policy import choose_threshold
from utils.routing.samples import epochs_for
from utils.routing.phi_spread import spread_warning
from utils.routing.router_data import lineage, router_split, seen_warning
from utils.routing.score_fit import fit_score_calibration
from utils.routing.dynamicdet_trainer import RouterLoop, RouterTrainer, samples_on
from utils.torch_utils import DistInfo, distributed_run, main_process_first, select_device, shared_run_dir
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.train.resume import STATE_KEYS, resume_options
from utils.train.rng import seed_all
from utils.weights.backends import settle_img_size
from utils.weights.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from utils.weights.downloads import attempt_download

LOGGER = logging.getLogger("dydet.train_router")


@dataclass
class Options:
    """train_router.py's options (flags: ``--img-size`` for ``img_size`` ...)."""

    router: str = option("dynamicdet", "dynamicdet: DynamicDet's router of a Dy model (stage 2); dualres: a "
                                       "resolution router around any trained detector", choices=["dynamicdet", "dualres"])
    weights: str = option("", "dynamicdet: a stage-1 Dy checkpoint (ours, or an official one with --cfg); "
                              "dualres: any detector checkpoint (plain or Dy)")
    cfg: str = option("", "architecture of an official DynamicDet checkpoint")
    data: str = option("", "data YAML (YOLOv7 or Ultralytics form)")
    hyp: str = option("", "hyperparameter YAML for the loss gains (default: by model family)")
    epochs: int | None = option(None, f"default: dynamicdet --steps optimizer steps, in epochs of at least "
                                      f"{ROUTER.epoch_samples} samples (at least {ROUTER.min_epochs}); "
                                      f"dualres {DUALRES.epochs}")
    steps: int = option(ROUTER.steps, "dynamicdet: optimizer steps when --epochs is not given")
    logit_decay: float = option(ROUTER.logit_decay, "dynamicdet: weight of the mean squared router logit, which "
                                "keeps φ from saturating at 0 or 1 (0: the paper's Eq. 12 alone)")
    patience: int = option(ROUTER.patience, "dynamicdet: stop after this many epochs without a better "
                                            "validation routed loss (0: never)")
    epoch_samples: int = option(0, hidden=True)  # samples per epoch when the schedule came from --steps
    batch_size: int | None = option(None, f"total over all processes; default {BATCH['train_router']} "
                                          f"(dynamicdet), {DUALRES.batch_size} (dualres)")
    img_size: int | None = option(None, "input size (default: the size the weights were trained at, else 640)")
    device: str = groups.device()
    workers: int = option(WORKERS, "dataloader workers per process")
    lr: float | None = option(None, f"dynamicdet: AdamW, constant, default {ROUTER.lr:g}; dualres: SGD, "
                                    f"cosine, default {DUALRES.lr:g}")
    weight_decay: float | None = option(None, f"default {ROUTER.weight_decay:g} (dynamicdet), "
                                              f"{DUALRES.weight_decay:g} (dualres)")
    strategy: str = option("adaptive", "adaptive: Eq. 12 (paper); random, ap: baselines of paper Fig. 7",
                           choices=list(STRATEGIES))
    project: str = groups.project("train_router")
    name: str = groups.name()
    exist_ok: bool = groups.exist_ok()
    resume: bool | str = option(False, "resume last.pt (or the latest run)", nargs="?", const=True, type=str)
    seed: int = option(0, "shuffling, the 'random' strategy's labels and the Gumbel noise")
    router_kind: str = option("thumb", "dualres: the router's feature extractor", choices=list(ROUTER_KINDS))
    router_size: int | None = option(None, "dualres: the router's thumbnail size (default: 128 thumb, 224 MobileNet)")
    router_weights: str | None = option(None, "dualres: a torchvision MobileNetV3 state_dict for the router")
    router_from: str | None = option(None, "dualres: attach the trained router of this DualRes checkpoint "
                                           "(no training; calibrated on --data's val images)")
    scale: float = option(DUALRES.scale, "dualres: low resolution = scale x --img-size, rounded to the stride")
    inner_threshold: float | str | None = option(None, "dualres around a Dy model: its routing threshold, a number "
                                                       "or pK from its calibration (default 0: always detector 2)")
    tau: float = option(DUALRES.tau, "dualres: Gumbel-Softmax temperature")
    gamma: float = option(DUALRES.gamma, "dualres: weight of the balance term (p - theta)^2")
    theta: float = option(DUALRES.theta, "dualres: target share of high-resolution images")
    momentum: float = option(DUALRES.momentum, "dualres: SGD Nesterov momentum")
    normalize_losses: bool = option(True, "dualres: do not divide the losses by their mean gap",
                                    flag="--no-normalize-losses")
    calibrate: bool = option(False, "no training: measure φ on the val images and the route costs on this "
                                    "machine, and write <run>/weights/calibrated.pt (the input is never modified)")
    save_dir: str | None = option(None, hidden=True)  # set by --resume / shared by torchrun processes


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Train the router with train_router.py's options (an :class:`Options` or keywords); returns paths and metrics."""
    opt = _with_router_defaults(make_options(Options, options, **kwargs))
    if opt.calibrate or opt.router_from:
        return calibrate(opt)
    resume_ckpt = None
    if opt.resume:
        opt, resume_ckpt, state = resume_options(opt, STATE_KEYS, script="train_router.py")
        if not RESUME_KEYS[opt.router] <= set(state):
            raise CheckpointError(f"--resume: {resume_ckpt} is not a train_router.py --router {opt.router} last.pt")
    return distributed_run(ROUTERS[opt.router], opt, resume_ckpt)


def _with_router_defaults(opt: Options) -> Options:
    """Fill epochs, batch size, lr and weight decay left unset with the chosen router's defaults."""
    own = ROUTER_DEFAULTS[opt.router]
    return replace(opt, **{k: v for k, v in own.items() if getattr(opt, k) is None})


def _train_dynamicdet(opt: Options, device: torch.device, dist_info: DistInfo, resume_ckpt: Path | None) -> dict:
    """DynamicDet's router (paper Sec. 3.3) on the frozen detectors of a stage-1 Dy model."""
    seed_all(opt.seed + max(dist_info.rank, 0))
    model, extra, info = _dynamic_model(opt, device, resume_ckpt)
    opt = _settle_size(opt, info, model)
    data = _data(opt, model)
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp_for(model, opt.hyp), model.heads[0].nl, model.nc, opt.img_size))
    train_loader, val_loader = _loaders(opt, data, int(model.stride.max()), dist_info, model.nc)
    meta = _lineage(opt, data, info, train_loader, dist_info)
    save_dir = shared_run_dir(opt, dist_info)
    train = samples_on(model, train_loader, compute_loss, device, dist_info, "train: detectors")
    val = samples_on(model, val_loader, compute_loss, device, DistInfo(), "val: detectors") if val_loader else None
    delta = float(extra["delta"]) if "delta" in extra else estimate_offset(train.l1, train.l2)
    scale = float(extra["gain_scale"]) if "gain_scale" in extra else gain_scale(train.l1, train.l2, delta)
    LOGGER.info("adaptive offset Δ = median(L1 - L2) = %.5g, gain scale median|L1 - L2 - Δ| = %.5g over %d "
                "training images", delta, scale, len(train))
    opt = _schedule(opt, len(train))
    loop = RouterLoop(opt.epochs, opt.batch_size, opt.img_size, opt.lr, opt.weight_decay, opt.strategy, opt.seed,
                      epoch_samples=opt.epoch_samples, patience=opt.patience, logit_decay=opt.logit_decay,
                      gain_scale=scale)
    trainer = RouterTrainer(model, loop, delta, train, val, save_dir, device, dist_info, record=options_dict(opt),
                            lineage=meta)
    if resume_ckpt is not None:
        trainer.restore(extra)
    metrics = trainer.fit()
    if dist_info.is_main and (moved := trainer.movement()) < 1e-3:
        LOGGER.warning("warning: the router's weights barely moved (by at most %.1e of their size), so it routes as "
                       "it did before training; raise --lr or --steps", moved)
    if dist_info.is_main and trainer.best_phi is not None and (line := spread_warning(trainer.best_phi)):
        LOGGER.warning(line)
    return {"save_dir": save_dir, "last": save_dir / "weights" / "last.pt", "best": save_dir / "weights" / "best.pt",
            "delta": delta, "metrics": metrics}


def _train_dualres(opt: Options, device: torch.device, dist_info: DistInfo, resume_ckpt: Path | None) -> dict:
    """A DualRes resolution router (paper Sec. 3.1.2) around a frozen detector."""
    seed_all(opt.seed + max(dist_info.rank, 0))
    model, extra, info = _dualres_model(opt, device, resume_ckpt)
    opt = _settle_size(opt, info, model)
    data = _data(opt, model)
    compute_loss = detector_loss(model, opt.img_size, opt.hyp)
    train_loader, val_loader = _loaders(opt, data, int(model.stride.max()), dist_info, model.nc)
    meta = _lineage(opt, data, info, train_loader, dist_info)
    save_dir = shared_run_dir(opt, dist_info)
    train = collect_dualres(model, train_loader, compute_loss, device, "train: both resolutions",
                            dist_info.is_main).gather(dist_info)
    val = collect_dualres(model, val_loader, compute_loss, device, "val: both resolutions") if val_loader else None
    loop = DualResOptions(epochs=opt.epochs, batch_size=opt.batch_size, lr=opt.lr, momentum=opt.momentum,
                          weight_decay=opt.weight_decay, tau=opt.tau, gamma=opt.gamma, theta=opt.theta,
                          normalize_losses=opt.normalize_losses, seed=opt.seed, img_size=opt.img_size)
    trainer = DualResTrainer(model, loop, train, val, save_dir, device, dist_info, record=options_dict(opt),
                             lineage=meta)
    if resume_ckpt is not None:
        trainer.restore(extra)
    metrics = trainer.fit()
    return {"save_dir": save_dir, "last": save_dir / "weights" / "last.pt", "best": save_dir / "weights" / "best.pt",
            "metrics": metrics}


ROUTERS = {"dynamicdet": _train_dynamicdet, "dualres": _train_dualres}
ROUTER_DEFAULTS = {
    "dynamicdet": {"batch_size": BATCH["train_router"], "lr": ROUTER.lr, "weight_decay": ROUTER.weight_decay},
    "dualres": {"epochs": DUALRES.epochs, "batch_size": DUALRES.batch_size, "lr": DUALRES.lr,
                "weight_decay": DUALRES.weight_decay},
}
RESUME_KEYS = {"dynamicdet": frozenset({"delta"}), "dualres": frozenset({"scheduler", "loss_scale"})}


def _schedule(opt: Options, n_train: int) -> Options:
    """--epochs as given, or the epochs that make --steps optimizer steps (small data: several
    passes per epoch, so that validation and checkpoints come every few thousand samples)."""
    if opt.epochs is not None:
        return opt
    epochs = epochs_for(opt.steps, n_train, opt.batch_size, ROUTER.epoch_samples, ROUTER.min_epochs)
    LOGGER.info("router schedule: %d optimizer steps of %d samples = %d epochs of at least %d samples, stopping "
                "after %d epochs without a better validation routed loss", opt.steps, opt.batch_size, epochs,
                max(ROUTER.epoch_samples, n_train), opt.patience)
    return replace(opt, epochs=epochs, epoch_samples=ROUTER.epoch_samples)


def _data(opt: Options, model: torch.nn.Module):
    data = load_data_config(opt.data)
    if len(data.names) != model.nc:
        raise ValueError(f"{opt.data} has {len(data.names)} classes, the model {model.nc}")
    return data


def calibrate(opt: Options) -> dict:
    """Routing calibration of --weights (or of --weights with --router-from's router) on --data's
    val split, saved as a new checkpoint."""
    device = select_device(opt.device)
    if opt.router_from:
        detector, info = _load(opt, opt.weights, device)
        model = attach_router(detector, opt.router_from, _inner_threshold(opt, detector, info))
    else:
        model, _, info = _dynamic_model(opt, device, None)
    opt = _settle_size(opt, info, model)
    data = load_data_config(opt.data, require=("val",))
    result = evaluate(model.eval(), _val_loader(opt, data, int(model.stride.max()), model.nc), list(model.names),
                      img_size=opt.img_size, time_routed=False)  # φ and both routes' detections of every image
    phi = result.phi
    if line := spread_warning(phi):
        LOGGER.warning(line)
    calib = calibration_record(phi, img_size=opt.img_size, images=result.paths, **route_costs(model, opt.img_size))
    calib["score_calibration"] = _score_calibration(model, result)
    save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok, mkdir=True)
    out = save_dir / "weights" / "calibrated.pt"
    meta = {**_carried(info.get("meta")), "stage": "calibrated", "calibrated_from": str(opt.weights),
            "calibration_data": str(opt.data),
            "router_from": str(opt.router_from) if opt.router_from else None}
    save_checkpoint(out, model, names=model.names, img_size=opt.img_size, thresholds=calib, meta=meta)
    LOGGER.info("calibration on %d images (route latencies easy %.1f ms, hard %.1f ms) saved to %s",
                len(phi), calib["latency_ms"]["easy"], calib["latency_ms"]["hard"], out)
    return {"save_dir": save_dir, "calibrated": out, "thresholds": calib}


def _score_calibration(model: torch.nn.Module, result) -> dict | None:
    """Per-route score maps fitted on the validation images' detections (None if one cannot be fitted)."""
    streams = result.streams
    easy, hard = model.route_names
    try:
        maps = fit_score_calibration({easy: streams["detector1"].preds, hard: streams["detector2"].preds},
                                     streams["all"].gts)
    except ValueError as e:  # e.g. a route without a single true detection
        LOGGER.warning("warning: no score calibration: %s", e)
        return None
    LOGGER.info("score calibration (s' = sigmoid(a logit(s) + b)): %s",
                ", ".join(f"{route} a={a:.3g} b={b:.3g}" for route, (a, b) in maps.maps.items()))
    return maps.record()


def _load(opt: Options, path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A checkpoint from a path or zoo name (downloaded when missing)."""
    if not path:
        raise ValueError("give --weights: a trained detector checkpoint")
    if not Path(path).is_file() and zoo_entry(path) is None:
        raise FileNotFoundError(f"--weights: checkpoint {path} not found")
    path = attempt_download(path)
    return load_checkpoint(path, cfg=opt.cfg or zoo_cfg(path), device=device)


def _inner_threshold(opt: Options, detector: torch.nn.Module, info: dict) -> float | None:
    """--inner-threshold as a number: a 'pK' request resolved on the Dy detector's own calibration
    (the routing policy every script uses)."""
    if opt.inner_threshold is None or not detector.is_dynamic:
        return opt.inner_threshold  # None, or a plain detector (DualResModel refuses the threshold)
    size = settle_img_size(opt.img_size, info, int(detector.stride.max()))
    threshold, how = choose_threshold(detector, info, size, dy_thres=opt.inner_threshold)
    LOGGER.info("inner Dy detector routing: %s", how)
    return threshold


def _settle_size(opt: Options, info: dict, model: torch.nn.Module) -> Options:
    """--img-size, or the size the weights were trained at (see settle_img_size)."""
    return replace(opt, img_size=settle_img_size(opt.img_size, info, int(model.stride.max())))


def _dynamic_model(opt: Options, device: torch.device, resume_ckpt: Path | None
                   ) -> tuple[torch.nn.Module, dict, dict]:
    """The model from --weights (or the interrupted run's last.pt), checked to have a router;
    with its training state (when resuming) and its info."""
    model, info = _load(opt, resume_ckpt or opt.weights, device)
    if not model.is_dynamic:
        raise ValueError(f"{resume_ckpt or opt.weights} holds a plain (non-dynamic) detector; train_router.py needs "
                         "a Dy model (a stage-1 checkpoint of a dy-* config), or --router dualres")
    if isinstance(model, DualResModel) and opt.router == "dynamicdet" and not opt.calibrate:
        raise ValueError(f"{opt.weights} is a DualRes model; train its router with --router dualres")
    return model, info["extra"] if resume_ckpt is not None else {}, info


def _dualres_model(opt: Options, device: torch.device, resume_ckpt: Path | None) -> tuple[DualResModel, dict, dict]:
    """A new DualRes router around --weights' detector, or the interrupted run's model."""
    if resume_ckpt is not None:
        model, info = _load(opt, resume_ckpt, device)
        return model, info["extra"], info
    detector, info = _load(opt, opt.weights, device)
    model = wrap_detector(detector, kind=opt.router_kind, router_size=opt.router_size, router_weights=opt.router_weights,
                          scale=opt.scale, inner_threshold=_inner_threshold(opt, detector, info))
    return model.to(device), {}, info


def _loaders(opt, data, stride: int, dist_info: DistInfo, nc: int):
    """The training images (letterboxed, no augmentation: the router learns on the images it will see),
    this process's share, for the one pass that collects their samples; and val (main process only).

    Inference passes use twice the training batch (no gradients are kept).
    """
    sources, split = router_split(data)
    per_rank = max(opt.batch_size // dist_info.world_size, 1)
    with main_process_first(dist_info):
        train_loader, _ = create_dataloader(sources, opt.img_size, per_rank * 2, stride, augment=False,
                                            workers=opt.workers, prefix=f"{split}: ", rank=dist_info.rank,
                                            world_size=dist_info.world_size, nc=nc)
    if dist_info.is_main:
        LOGGER.info("router training images: the %s split of %s (%d images)", split, opt.data,
                    len(train_loader.dataset.im_files))
    return train_loader, _val_loader(opt, data, stride, nc) if dist_info.is_main else None


def _carried(meta: dict | None) -> dict:
    """The training records a checkpoint derived from ``meta``'s keeps."""
    return {k: v for k, v in (meta or {}).items() if k in ("trained_on", "router_trained_on")}


def _lineage(opt: Options, data, info: dict, train_loader, dist_info: DistInfo) -> dict:
    """Warn when the router's images trained the detectors; the meta its checkpoints carry."""
    files = train_loader.dataset.im_files
    if dist_info.is_main and (line := seen_warning(info.get("meta"), files, router_split(data)[1], opt.data)):
        LOGGER.warning(line)
    return lineage(info.get("meta"), files)


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
