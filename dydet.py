"""Python API: load a detector once, predict on files, folders, videos, streams or arrays.

    from dydet import DyDet

    model = DyDet()                    # the shipped demo model; or DyDet("best.pt"), DyDet("dy-yolov7.pt")
    for r in model.predict("images/", dy_thres="p30"):
        print(r)                       # Result('images/a.jpg'; 3 boxes (2 circle, 1 cross); hard φ=0.81; ...)
        r.save(f"out/{Path(r.path).name}")
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from utils.data.sources import as_source
from utils.defaults import DEMO_WEIGHTS, PREDICT
from utils.inference.predictor import BatchPrediction, Predictor
from utils.inference.results import Result
from utils.inference.score_calibration import ScoreCalibration
from utils.inference.setup import load_for_inference, run_precision
from utils.inference.transform import Batch, LetterboxTransform
from utils.routing.policy import choose_threshold
from utils.validate import check_img_size
from utils.weights.backends import input_size

LOGGER = logging.getLogger("dydet")

__all__ = ["DyDet"]


class DyDet:
    """A loaded detector (ours, an official release, a zoo name, an ``.onnx`` or OpenVINO export).

    ``threshold`` is the routing threshold of dynamic models (an image is hard when φ >
    threshold); assign a number or 'pK' (K% hard, from the checkpoint's calibration).
    ``img_size`` is the input size used when a call gives none: the size the weights were
    trained at (an export's own size), else 640. ``half``: fp16 on CUDA, bf16 on a CPU that has
    it natively (PyTorch autocast, or OpenVINO's bf16 precision for an IR); refused with a
    ValueError on a CPU without AVX512_BF16/AMX. ``keep_freed_memory``: let glibc keep freed
    activation memory mapped (a faster CPU fast path, but it changes malloc settings for the
    whole process; off by default, as a library should leave the process alone). A dynamic
    model's per-route score calibration (when its checkpoint holds one) maps each image's scores
    by its route, unless ``raw_scores``.

    Thread safety: one object may be used from several threads. Image loading and
    post-processing run in parallel; the forward passes through the shared model are serialised
    by a lock (``self.lock``), so each thread gets exactly the results of a serial call. For
    parallel inference, use one DyDet per thread (or process).
    """

    def __init__(self, weights: str | Path = DEMO_WEIGHTS, cfg: str | None = None, device: str = "",
                 fuse: bool = True, half: bool = False, keep_freed_memory: bool = False,
                 raw_scores: bool = False) -> None:
        self.half = bool(half)
        self.lock = threading.Lock()  # one forward pass at a time through the shared model
        self.model, self.info = load_for_inference(weights, cfg=cfg, device=device, half=self.half, fuse=fuse,
                                                   keep_freed_memory=keep_freed_memory)
        self._threshold = float(self.model.threshold) if self.is_dynamic else None
        self.score_calibration = None if raw_scores else ScoreCalibration.from_record(self.calibration)

    @property
    def img_size(self) -> int:
        return input_size(None, self.info)

    @property
    def names(self) -> list[str]:
        return list(self.info.get("names") or self.model.names)

    @property
    def is_dynamic(self) -> bool:
        return bool(self.model.is_dynamic)

    @property
    def route_names(self) -> tuple[str, str]:
        """What the two routes are called: ('easy', 'hard') for Dy models, ('low', 'high') for DualRes."""
        return tuple(self.model.route_names or ("easy", "hard"))  # a plain model: its images count as easy

    @property
    def stride(self) -> int:
        return int(self.model.stride.max())

    @property
    def calibration(self) -> dict:
        """The checkpoint's routing calibration (threshold table and route costs), maybe empty."""
        return dict(self.info.get("thresholds") or {})

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | str) -> None:
        self.set_threshold(value)

    def set_threshold(self, spec: float | str | None = None, *, target_latency: float | None = None,
                      target_gflops: float | None = None, img_size: int | None = None,
                      remeasure: bool = False) -> str:
        """Choose the routing threshold from a number, 'pK', or a latency (ms) / GFLOPs target.

        A latency target uses the routes' latencies on this machine with this backend (measured
        once and cached; ``remeasure`` measures them again). Returns a description of the
        choice. Plain models have no route: a request is ignored.
        """
        threshold, how = self._resolve(spec, target_latency, target_gflops, img_size, remeasure)
        if threshold is not None:
            self._threshold = threshold
        return how

    def _resolve(self, spec, target_latency=None, target_gflops=None, img_size=None,
                 remeasure: bool = False) -> tuple[float | None, str]:
        return choose_threshold(self.model, self.info, input_size(img_size, self.info), dy_thres=spec,
                                target_latency=target_latency, target_gflops=target_gflops,
                                default=self._threshold, precision=run_precision(self.model, self.half),
                                remeasure=remeasure)

    def stream(self, source: Any, *, img_size: int | None = None, conf_thres: float = PREDICT.conf_thres,
               iou_thres: float = PREDICT.iou_thres, dy_thres: float | str | None = None, batch_size: int = 1,
               classes: Sequence[int] | None = None, agnostic_nms: bool = False,
               max_det: int = PREDICT.max_det) -> Iterator[Result]:
        """Yield one :class:`Result` per image or frame of ``source`` as it is processed (see
        :meth:`predict`); the way to consume webcams and streams, which never end by themselves."""
        threshold = self._threshold if dy_thres is None else self._resolve(dy_thres)[0]
        predictor = Predictor(self.model, conf_thres=conf_thres, iou_thres=iou_thres, classes=classes,
                              agnostic_nms=agnostic_nms, max_det=max_det, half=self.half,
                              score_calibration=self.score_calibration)
        transform = self._transform(input_size(img_size, self.info))
        for batch in transform.batches(as_source(source), batch_size):
            with self.lock:
                pred = predictor(batch.imgs, threshold)
            yield from batch_results(batch, pred, self.names, self.route_names)

    def predict(self, source: Any, **kwargs: Any) -> list[Result]:
        """Detect objects in ``source``: a path, folder, glob, ``.txt`` list, video, webcam index or
        stream URL; a list of paths; or numpy BGR arrays / PIL images (one or a list).

        Keywords as :meth:`stream`: ``img_size`` (default :attr:`img_size`), ``conf_thres``,
        ``iou_thres``, ``dy_thres`` (a number or 'pK', overriding :attr:`threshold` for this call),
        ``batch_size``, ``classes``, ``agnostic_nms``, ``max_det``.
        """
        return list(self.stream(source, **kwargs))

    __call__ = predict

    def _transform(self, img_size: int) -> LetterboxTransform:
        """The letterbox for ``img_size``: the long side rounded up to a stride multiple, or the
        fixed (h, w) of an export that takes one input size."""
        fixed = getattr(self.model, "img_size", None)
        if fixed is not None and not isinstance(self.model, torch.nn.Module):
            shape = (int(fixed[0]), int(fixed[1]))
            if img_size != max(shape):
                LOGGER.info("this export takes %dx%d inputs; images are fitted to that size", *shape)
            return LetterboxTransform(max(shape), self.stride, shape)
        return LetterboxTransform(check_img_size(img_size, self.stride), self.stride)

    def __getstate__(self) -> dict:
        """Copies and pickles get a lock of their own (a lock cannot be copied)."""
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        kind = f"dynamic, threshold {self._threshold:.4g}" if self.is_dynamic else "plain"
        return f"DyDet({self.info.get('path', '?')!r}, {len(self.names)} classes, {kind})"


def batch_results(batch: Batch, pred: BatchPrediction, names: list[str],
                  route_names: tuple[str, str] = ("easy", "hard")) -> list[Result]:
    """:class:`Result` per image of a batch: boxes mapped back to the original images.

    Each image is charged an equal share of the batch's times (exact at batch size 1).
    """
    hw = tuple(batch.imgs.shape[2:])
    speed = {k: v / len(batch.frames) for k, v in pred.times.items()}
    results = []
    for i, (frame, ratio_pad) in enumerate(zip(batch.frames, batch.ratio_pads)):
        det = pred.dets[i].detach().float().cpu()
        boxes = LetterboxTransform.to_original(det[:, :4], hw, (frame.img.shape[:2], ratio_pad))
        route = None if pred.hard is None else route_names[int(bool(pred.hard[i]))]
        phi = None if pred.phi is None else float(pred.phi[i])
        results.append(Result(frame.path, frame.img, boxes.numpy(), det[:, 4].numpy(), det[:, 5].numpy(),
                              names, route, phi, dict(speed), frame.index, frame.fps))
    return results
