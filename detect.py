"""Detect objects in images, videos, webcams and streams; dynamic models route each image.

    python detect.py --weights weights/demo-dy-yolov7-tiny.pt --source data/images --img-size 640
    python detect.py --weights best.pt --source video.mp4 --dy-thres p30 --save-txt
    python detect.py --weights dy-yolov7.pt --source 0 --view-img          # webcam 0

Annotated images/videos (with each image's route and φ for dynamic models) and, with
--save-txt, YOLO labels go to runs/detect/<name>/.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from dydet import DyDet
from utils.cli import script_main
from utils.paths import increment_path
from utils.data.images import write_image
from utils.inference.results import Result
from utils.data.sources import open_source

LOGGER = logging.getLogger("dydet.detect")
WRITABLE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


def run(weights: str | Path, source: str | Path, cfg: str | None = None, img_size: int = 640,
        conf_thres: float = 0.25, iou_thres: float = 0.45, device: str = "", dy_thres: float | str | None = None,
        target_latency: float | None = None, target_gflops: float | None = None, batch_size: int = 1,
        view_img: bool = False, save_txt: bool = False, save_conf: bool = False, nosave: bool = False,
        classes: list[int] | None = None, agnostic_nms: bool = False, max_det: int = 1000,
        project: str | Path = "runs/detect", name: str = "exp", exist_ok: bool = False,
        line_thickness: int | None = None) -> dict:
    """Detect on ``source`` and save the outputs; returns the summary dict (see :class:`Tally`)."""
    src = open_source(source)
    detector = DyDet(weights, cfg=cfg, device=device)
    how = detector.set_threshold(dy_thres, target_latency=target_latency, target_gflops=target_gflops,
                                 img_size=img_size)
    LOGGER.info("routing: %s", how)
    save_dir = increment_path(Path(project) / name, exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    sink = Outputs(save_dir, not nosave, save_txt, save_conf, view_img, line_thickness)
    tally = Tally(threshold=detector.threshold)
    results = detector.stream(src, img_size, conf_thres, iou_thres, None, batch_size, classes, agnostic_nms, max_det)
    try:
        for r in tqdm(results, desc="detect", unit="img"):
            sink.write(r)
            tally.add(r)
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


# --------------------------------------------------------------------------- outputs
def _safe_stem(path: str) -> str:
    """A file-name stem for a result path (URLs and webcam labels included)."""
    p = Path(path)
    stem = p.stem if p.suffix else p.name
    if "://" in path or not stem:
        stem = re.sub(r"[^\w.-]+", "_", path.split("://", 1)[-1]).strip("_")
    return stem or "stream"


def display_available() -> bool:
    """Whether a window can be opened (an X/Wayland display on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Outputs:
    """Writes annotated images, videos (one per video file or stream) and YOLO label files."""

    def __init__(self, save_dir: Path, save_img: bool = True, save_txt: bool = False, save_conf: bool = False,
                 view_img: bool = False, line_width: int | None = None) -> None:
        self.save_dir, self.save_img, self.save_txt, self.save_conf = save_dir, save_img, save_txt, save_conf
        self.line_width = line_width
        self.view_img = view_img and self._can_view()
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.saved: list[Path] = []
        self.n_labels = 0
        self._last_path: str | None = None
        self.quit = False  # set when 'q' is pressed in a result window

    @staticmethod
    def _can_view() -> bool:
        if display_available():
            return True
        LOGGER.warning("--view-img: no display found, not showing results")
        return False

    def write(self, r: Result) -> None:
        annotated = r.plot(self.line_width) if (self.save_img or self.view_img) else None
        if self.save_txt:
            stem = _safe_stem(r.path) + ("" if r.frame is None else f"_{r.frame}")
            r.to_txt(self.save_dir / "labels" / f"{stem}.txt", self.save_conf)
            self.n_labels += 1
        if self.save_img:
            self._save(r, annotated)
        if self.view_img:
            self._show(r.path, annotated)

    def _save(self, r: Result, img) -> None:
        if r.frame is None:
            suffix = Path(r.path).suffix.lower()
            name = Path(r.path).name if suffix in WRITABLE_SUFFIXES else f"{_safe_stem(r.path)}.jpg"
            self.saved.append(write_image(self.save_dir / name, img))
            return
        if r.path != self._last_path:
            self._release_finished_file()
            self._last_path = r.path
        if r.path not in self.writers:
            self.writers[r.path] = self._open_writer(r, img.shape)
        self.writers[r.path].write(img)

    def _open_writer(self, r: Result, shape) -> cv2.VideoWriter:
        path = self.save_dir / f"{_safe_stem(r.path)}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), r.fps or 30.0, (shape[1], shape[0]))
        if not writer.isOpened():
            raise RuntimeError(f"cannot write video {path}")
        self.saved.append(path)
        return writer

    def _release_finished_file(self) -> None:
        """A video file's frames come in one run: its writer can close when another path starts."""
        last = self._last_path
        if last is not None and last in self.writers and os.path.isfile(last):
            self.writers.pop(last).release()

    def _show(self, path: str, img) -> None:
        try:
            cv2.imshow(path, img)
            self.quit = cv2.waitKey(1) & 0xFF == ord("q")
        except cv2.error as e:
            LOGGER.warning("--view-img: cannot open a window (%s), not showing results", str(e).strip().splitlines()[-1])
            self.view_img = False

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        self.writers.clear()
        if self.view_img:
            cv2.destroyAllWindows()


# --------------------------------------------------------------------------- summary
@dataclass
class Tally:
    """Counts and per-route time over a run (each image's share of its batch's time)."""

    threshold: float | None = None
    images: int = 0
    frames: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    route_ms: dict[str, float] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def add(self, r: Result) -> None:
        if r.frame is None:
            self.images += 1
        else:
            self.frames += 1
        route = r.route or "all"
        self.routes[route] = self.routes.get(route, 0) + 1
        self.route_ms[route] = self.route_ms.get(route, 0.0) + sum(r.timing.values())
        for k, v in r.timing.items():
            self.stage_ms[k] = self.stage_ms.get(k, 0.0) + v

    def summary(self, save_dir: Path, outputs: Outputs) -> dict:
        n = max(self.images + self.frames, 1)
        return {
            "images": self.images, "frames": self.frames,
            "easy": self.routes.get("easy", 0), "hard": self.routes.get("hard", 0),
            "threshold": self.threshold,
            "ms_per_route": {k: self.route_ms[k] / c for k, c in self.routes.items()},
            "ms_per_stage": {k: v / n for k, v in self.stage_ms.items()},
            "seconds": time.perf_counter() - self.start,
            "save_dir": str(save_dir), "saved": [str(p) for p in outputs.saved], "labels": outputs.n_labels,
        }


def print_summary(s: dict) -> None:
    print(f"Done: {s['images']} images and {s['frames']} video frames in {s['seconds']:.1f} s")
    per = s["ms_per_route"]
    if s["threshold"] is not None:
        routes = ", ".join(f"{s[k]} {k}" + (f" ({per[k]:.1f} ms each)" if k in per else "") for k in ("easy", "hard"))
        print(f"Routing (threshold {s['threshold']:.4g}): {routes}")
    stages = s["ms_per_stage"]
    if stages:
        print(f"Speed: {stages.get('pre', 0):.1f} ms pre-process, {stages.get('infer', 0):.1f} ms inference, "
              f"{stages.get('nms', 0):.1f} ms NMS per image")
    saved = [f"{len(s['saved'])} images/videos"] + ([f"{s['labels']} label files in labels/"] if s["labels"] else [])
    print(f"Results saved to {s['save_dir']} ({', '.join(saved)})")


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (ours or official), zoo name or .onnx")
    p.add_argument("--cfg", default=None, help="architecture for official DynamicDet checkpoints, e.g. dy-yolov7")
    p.add_argument("--source", required=True,
                   help="image, folder, glob, .txt list, video, webcam index, stream URL or .streams file")
    p.add_argument("--img-size", type=int, default=640, help="inference size (long side, pixels)")
    p.add_argument("--conf-thres", type=float, default=0.25)
    p.add_argument("--iou-thres", type=float, default=0.45)
    p.add_argument("--device", default="", help="cpu, 0, 0,1 ... (default: CUDA 0 if available)")
    p.add_argument("--dy-thres", default=None,
                   help="routing threshold of dynamic models: a number in [0, 1], or pK = K%% hard images")
    p.add_argument("--target-latency", type=float, default=None, help="choose the threshold for this latency (ms)")
    p.add_argument("--target-gflops", type=float, default=None, help="choose the threshold for this average cost")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--view-img", action="store_true", help="show results in a window (needs a display; q quits)")
    p.add_argument("--save-txt", action="store_true", help="write YOLO labels to <save dir>/labels/")
    p.add_argument("--save-conf", action="store_true", help="add the confidence to --save-txt labels")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images or videos")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--project", default="runs/detect")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--line-thickness", type=int, default=None, help="box line width in pixels (default: by size)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return script_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
