"""Detect objects in images, videos, webcams and streams; dynamic models route each image.

    python detect.py                                             # the demo model on data/images
    python detect.py --source photo.jpg                          # the demo model on your image
    python detect.py --weights best.pt --source video.mp4 --dy-thres p30 --save-txt
    python detect.py --weights dy-yolov7.pt --source 0 --view-img          # webcam 0

Annotated images/videos (with each image's route and φ for dynamic models) and, with
--save-txt / --save-crop, YOLO labels and cropped boxes go to runs/detect/<name>/.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dydet import DyDet
from utils.cli import script_main
from utils.data.sources import open_source
from utils.defaults import DEMO_SOURCE, DEMO_WEIGHTS, LINE_THICKNESS, PREDICT
from utils.inference.tally import Tally, print_summary
from utils.inference.writer import ResultWriter
from utils.options import make_options, option, parse_options
from utils import option_groups as groups
from utils.paths import increment_path
from utils.routing.calibration import requested_percent
from utils.routing.drift import HardShareWatch
from utils.validate import check_fraction
from utils.weights.backends import settle_img_size

LOGGER = logging.getLogger("dydet.detect")


@dataclass
class Options:
    """detect.py's options (flags: ``--conf-thres`` for ``conf_thres`` ...)."""

    weights: str = option(DEMO_WEIGHTS, "checkpoint (ours or official), zoo name, .onnx or OpenVINO IR "
                                                "(.xml or *_openvino/; default: the demo model)")
    source: str | None = option(None, "image, folder, glob, .txt list, video, webcam index, stream URL or "
                                      ".streams file (default: the sample images in data/images)")
    cfg: str | None = option(None, "architecture for official DynamicDet checkpoints, e.g. dy-yolov7")
    img_size: int | None = option(None, "inference size, long side in pixels (default: the size the weights "
                                        "were trained at, else 640)")
    conf_thres: float = groups.conf_thres(PREDICT.conf_thres)
    iou_thres: float = groups.iou_thres(PREDICT.iou_thres)
    max_det: int = groups.max_det(PREDICT.max_det)
    device: str = groups.device()
    dy_thres: float | str | None = groups.dy_thres()
    target_latency: float | None = groups.target_latency()
    remeasure_latency: bool = groups.remeasure_latency()
    raw_scores: bool = groups.raw_scores()
    target_gflops: float | None = groups.target_gflops()
    batch_size: int = option(1, "images per forward pass")
    half: bool = groups.half()
    view_img: bool = option(False, "show results in a window (needs a display; q quits)")
    save_txt: bool = option(False, "write YOLO labels to <save dir>/labels/")
    save_conf: bool = option(False, "add the confidence to --save-txt labels")
    save_crop: bool = option(False, "write each detection's box to <save dir>/crops/<class>/")
    nosave: bool = option(False, "do not save annotated images or videos")
    classes: list[int] | None = option(None, "keep only these class ids")
    agnostic_nms: bool = option(False, "class-agnostic NMS")
    project: str = groups.project("detect")
    name: str = groups.name()
    exist_ok: bool = groups.exist_ok()
    line_thickness: int | None = option(LINE_THICKNESS, "box line width in pixels (default: by image size)")


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Detect on ``source`` and save the outputs; returns the summary dict (see :class:`Tally`)."""
    opt = make_options(Options, options, **kwargs)
    check_fraction(opt.conf_thres, "--conf-thres")
    check_fraction(opt.iou_thres, "--iou-thres")
    src = open_source(DEMO_SOURCE if opt.source is None else opt.source)
    detector = DyDet(opt.weights, cfg=opt.cfg, device=opt.device, half=opt.half, raw_scores=opt.raw_scores,
                     keep_freed_memory=True)  # a script owns its process
    img_size = settle_img_size(opt.img_size, detector.info, detector.stride)
    how = detector.set_threshold(opt.dy_thres, target_latency=opt.target_latency, target_gflops=opt.target_gflops,
                                 img_size=img_size, remeasure=opt.remeasure_latency)
    LOGGER.info("routing: %s; input size %d", how, img_size)
    save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok, mkdir=True)
    sink = ResultWriter(save_dir, not opt.nosave, opt.save_txt, opt.save_conf, opt.view_img, opt.line_thickness,
                        opt.save_crop)
    tally = Tally(threshold=detector.threshold, img_size=img_size, route_names=detector.route_names)
    k = requested_percent(opt.dy_thres) if detector.is_dynamic else None
    watch = HardShareWatch(k) if k is not None else None  # does the dial hold on video frames?
    results = detector.stream(src, img_size=img_size, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                              batch_size=opt.batch_size, classes=opt.classes, agnostic_nms=opt.agnostic_nms,
                              max_det=opt.max_det)
    try:
        for r in tqdm(results, desc="detect", unit="img", total=src.expected_frames()):
            sink.write(r)
            tally.add(r)
            if watch is not None and r.frame is not None and (message := watch.add(r.route == detector.route_names[1])):
                LOGGER.warning("warning: %s", message)
            if sink.quit:
                break
    except KeyboardInterrupt:  # the usual way to stop a webcam or stream
        LOGGER.info("interrupted; saving what was done")
    finally:
        results.close()
        sink.close()
    summary = tally.summary(save_dir, sink)
    print_summary(summary)
    return summary


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
