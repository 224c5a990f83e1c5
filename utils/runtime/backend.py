"""What every export backend shares: the export metadata, the PyTorch calling convention, batching.

:class:`ExportBackend` is the base of :class:`utils.runtime.onnx_model.OnnxModel` (ONNX Runtime)
and :class:`utils.runtime.openvino_model.OpenVinoModel` (OpenVINO). A subclass loads its file,
sets ``output_names`` and ``device``, calls :meth:`_configure` with the export metadata, and
implements :meth:`run` (one raw inference). ``model(x, threshold=None)`` then returns what the
PyTorch model returns: a :class:`models.dynamic.DyOutput` for a routed export, the prediction
otherwise; end-to-end exports (NMS in the graph) return per-image detections (k, 6). A graph
with a static batch runs any batch in padded chunks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.dynamic import DyOutput


class ExportBackend:
    """An exported detector, called like the PyTorch model (subclasses: ONNX Runtime, OpenVINO)."""

    fused = True
    training = False
    format = "export"  # info["format"]
    precision = "fp32"  # what the runtime computes in (an INT8 file: its float parts)
    int8: dict | None = None  # the quantization record of an INT8 file
    threads: int | None = None  # the runtime's thread count, None: its own default
    path: Path
    output_names: list[str]

    @property
    def file_name(self) -> str:
        """The name error messages use."""
        return self.path.name

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One raw inference: numpy inputs by name -> outputs in ``output_names`` order."""
        raise NotImplementedError

    def _configure(self, meta: dict, **info) -> None:
        """Attributes from the export metadata (as written by export.py) and the ``info`` dict."""
        self.meta = meta
        self.names = list(meta["names"])
        self.stride = torch.tensor(meta["stride"], dtype=torch.float32)
        self.img_size = tuple(int(v) for v in meta["img_size"])
        self.batch = meta["batch"]
        self.is_dynamic = bool(meta["dynamic"])
        self.kind = str(meta.get("kind") or ("dy" if self.is_dynamic else "plain"))  # older files: no kind
        self.route_names = tuple(meta.get("route_names") or ("easy", "hard")) if self.is_dynamic else ()
        self.route = meta["route"]
        self.threshold = meta["threshold"]
        self.threshold_input = bool(meta["threshold_input"])
        self.end2end = meta["end2end"] is not None
        self.nms = dict(meta["end2end"] or {})
        self.gflops = dict(meta.get("gflops") or {})
        self.info = {"format": self.format, "names": list(self.names), "img_size": list(self.img_size),
                     "thresholds": dict(meta.get("thresholds") or {}), "meta": meta, "extra": {},
                     "not_loaded": [], "dropped": [], "path": str(self.path), **info}

    # ---- torch.nn.Module look-alikes ------------------------------------------------------------
    def eval(self) -> ExportBackend:
        return self

    def train(self, mode: bool = True) -> ExportBackend:
        if mode:
            raise RuntimeError(f"an exported model ({self.file_name}) cannot be trained")
        return self

    # ---- inference --------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, threshold: float | None = None):
        """Like the PyTorch model: DyOutput (routed exports) or the prediction."""
        self._check_input(x)
        thr = self._threshold(threshold)
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._run_batches(arr, thr)
        pred = self._split(out[0], len(arr)) if self.end2end else out[0]
        if not self.is_dynamic:
            return pred
        return DyOutput(pred, out[self.output_names.index("phi")], out[self.output_names.index("hard")])

    forward = __call__

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.file_name} takes (batch, 3, h, w) images, got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.img_size:
            h, w = self.img_size
            raise ValueError(f"{self.file_name} was exported for {h}x{w} inputs but got "
                             f"{x.shape[2]}x{x.shape[3]}; resize the input or re-export with --img-size")

    def _threshold(self, threshold: float | None) -> float | None:
        if not self.is_dynamic:
            return None
        t = float(self.threshold if threshold is None else threshold)
        baked = float(self.meta["threshold"])
        if not self.threshold_input and abs(t - baked) > 1e-9:
            raise ValueError(f"{self.file_name} has routing threshold {baked:g} built in, so threshold {t:g} "
                             "cannot be used; re-export with --thres-input to choose it at run time")
        return t

    def _run_batches(self, arr: np.ndarray, threshold: float | None) -> list[torch.Tensor]:
        """Run ``arr`` in chunks of the static batch (padded), or at once for a dynamic batch."""
        step = self.batch or len(arr)
        parts = []
        for start in range(0, len(arr), step):
            chunk = arr[start:start + step]
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            feed = {"images": chunk}
            if self.threshold_input:
                feed["threshold"] = np.asarray(threshold, np.float32)
            parts.append(self._trim(self.run(feed), start, n))
        return [torch.from_numpy(np.concatenate(p)).to(self.device) for p in zip(*parts)]

    def _trim(self, outs: list[np.ndarray], start: int, n: int) -> list[np.ndarray]:
        """Drop padded images; end-to-end detections get image indices of the whole batch."""
        trimmed = []
        for name, o in zip(self.output_names, outs):
            if name == "dets":
                o = o[o[:, 0] < n].copy()
                o[:, 0] += start
                trimmed.append(o)
            else:
                trimmed.append(o[:n])
        return trimmed

    @staticmethod
    def _split(dets: torch.Tensor, n: int) -> list[torch.Tensor]:
        """(K, 7) [image, x1, y1, x2, y2, score, cls] -> per-image (k, 6) detections."""
        image = dets[:, 0].long()
        return [dets[image == i, 1:] for i in range(n)]
