"""Evaluate a detector on a YOLO-format dataset: mAP (pycocotools), P/R, speed, routing.

    python test.py --weights runs/train/exp/weights/best.pt --data data/demo/demo.yaml
    python test.py --weights best.pt --data pets.yaml --dy-thres p30 --verbose
    python test.py --weights best.pt --data pets.yaml --dy-sweep          # accuracy-speed sweep
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.cli import script_main
from utils.data.config import load_data_config
from utils.data.datasets import create_dataloader
from utils.defaults import BATCH, VAL, WORKERS
from utils.evaluation.evaluate import EvalResult, evaluate, gflops_or_empty
from utils.evaluation.metrics import coco_json_predictions
from utils.inference.score_calibration import ScoreCalibration
from utils.inference.setup import load_for_inference, run_precision
from utils.io import atomic_write_text
from utils.options import make_options, option, parse_options
from utils import option_groups as groups
from utils.paths import increment_path
from utils.validate import check_fraction
from utils.routing.analysis import routing_analysis
from utils.routing.policy import choose_threshold
from utils.weights.backends import settle_img_size

LOGGER = logging.getLogger("dydet.test")


@dataclass
class Options:
    """test.py's options (flags: ``--img-size`` for ``img_size`` ...)."""

    weights: str = option(help="checkpoint (ours or official), zoo name, .onnx export or OpenVINO IR (.xml or *_openvino/) to evaluate")
    data: str = option(help="data YAML")
    cfg: str | None = option(None, "architecture for official checkpoints, e.g. dy-yolov7")
    img_size: int | None = option(None, "inference size (default: the size the weights were trained at, else 640)")
    batch_size: int = option(BATCH["test"])
    conf_thres: float = groups.conf_thres(VAL.conf_thres)
    iou_thres: float = groups.iou_thres(VAL.iou_thres)
    max_det: int = groups.max_det(VAL.max_det)
    task: str = option("val", "split to score, or 'speed' (val, timed)", choices=["val", "test", "speed"])
    device: str = groups.device()
    dy_thres: float | str | None = groups.dy_thres()
    target_gflops: float | None = groups.target_gflops()
    target_latency: float | None = groups.target_latency()
    remeasure_latency: bool = groups.remeasure_latency()
    raw_scores: bool = groups.raw_scores()
    dy_sweep: bool = option(False, "dynamic models: score every hard fraction 0..100%% from one pass")
    workers: int = option(WORKERS, "dataloader workers")
    save_json: bool = option(False, "write COCO-format predictions.json")
    verbose: bool = option(False, "per-class results")
    project: str = groups.project("test")
    name: str = groups.name()
    exist_ok: bool = groups.exist_ok()
    half: bool = groups.half()
    plots: bool = option(True, "no plots", flag="--no-plots")
    save_dir: str | None = option(None, hidden=True)  # an exact output folder instead of project/name


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Score a model on split ``task`` of ``data``; returns the metrics dict (metrics.json).

    Dynamic models route by ``dy_thres`` (a number or 'pK' = K% hard from the checkpoint's
    calibration) or by ``target_gflops`` / ``target_latency`` (ms); ``dy_sweep`` also scores
    every hard fraction 0, 10, ..., 100% from the same pass (sweep.csv, plots, AUC-Policy).
    """
    opt = make_options(Options, options, **kwargs)
    check_fraction(opt.conf_thres, "--conf-thres")
    check_fraction(opt.iou_thres, "--iou-thres")
    model, info = load_for_inference(opt.weights, cfg=opt.cfg, device=opt.device, half=opt.half,
                                     keep_freed_memory=True)  # a script owns its process
    names = list(info.get("names") or model.names)
    img_size = settle_img_size(opt.img_size, info, int(model.stride.max()))
    if opt.dy_sweep and not model.is_dynamic:
        raise ValueError("--dy-sweep needs a dynamic model (dy-* config)")
    if opt.dy_sweep and not hasattr(model, "forward_both"):
        raise ValueError("--dy-sweep scores both detectors on every image: pass PyTorch weights, not an export")
    save_dir = Path(opt.save_dir) if opt.save_dir else \
        increment_path(Path(opt.project) / opt.name, opt.exist_ok, mkdir=True)
    save_dir.mkdir(parents=True, exist_ok=True)
    loader = _loader(opt, model, img_size, len(names))
    gflops = gflops_or_empty(model, img_size)
    threshold, how = choose_threshold(model, info, img_size, dy_thres=opt.dy_thres, target_latency=opt.target_latency,
                                      target_gflops=opt.target_gflops, gflops=gflops or None,
                                      precision=run_precision(model, opt.half), remeasure=opt.remeasure_latency)
    if model.is_dynamic:
        LOGGER.info("routing: %s", how)
    result = evaluate(model, loader, names, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                      max_det=opt.max_det, threshold=threshold, img_size=img_size, gflops=gflops,
                      plot_dir=save_dir if opt.plots else None, half=opt.half,
                      score_calibration=None if opt.raw_scores else ScoreCalibration.from_record(info.get("thresholds")))
    metrics = {**result.to_dict(), "img_size": img_size}
    if model.is_dynamic:
        metrics["dynamic"].update(threshold=threshold, threshold_choice=how)
        metrics["dynamic"].update(routing_analysis(result, model, info, threshold, img_size, gflops, save_dir,
                                                   dy_sweep=opt.dy_sweep, plots=opt.plots))
    print(result.table(names, opt.verbose))
    if opt.save_json:
        _save_json(result, save_dir / "predictions.json")
    atomic_write_text(save_dir / "metrics.json", json.dumps(_jsonable(metrics), indent=2))
    return metrics


def _loader(opt: Options, model, img_size: int, nc: int):
    """The split's images: rectangular batches, or squares for a fixed-size export."""
    split = "val" if opt.task == "speed" else opt.task
    data = load_data_config(opt.data, require=(split,))
    rect = not _fixed_size(model, img_size)
    # pad 0: the letterbox of detect.py and of the router calibration (φ depends on the padding)
    loader, _ = create_dataloader(data.split(split), img_size, opt.batch_size, int(model.stride.max()), rect=rect,
                                  pad=0.0, workers=opt.workers, prefix=f"{split}: ", nc=nc)
    return loader


def _fixed_size(model, img_size: int) -> bool:
    """Whether the model takes one input size only (an ONNX export); it must be ``img_size``."""
    size = None if isinstance(model, torch.nn.Module) else getattr(model, "img_size", None)
    if size is not None and tuple(size) != (img_size, img_size):
        raise ValueError(f"the model was exported for {size[0]}x{size[1]} inputs; run with --img-size {size[0]}")
    return size is not None


def _save_json(result: EvalResult, path: Path) -> None:
    ids = [int(Path(p).stem) if Path(p).stem.isnumeric() else Path(p).stem for p, _ in result.predictions]
    atomic_write_text(path, json.dumps(coco_json_predictions([d for _, d in result.predictions], ids)))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "pr"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalars
        return obj.item()
    return obj


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
