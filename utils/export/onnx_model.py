"""ONNX Runtime backend that is called like our PyTorch detectors (see export.py for the files).

``OnnxModel(path)(x)`` returns what the PyTorch model returns: a :class:`models.dynamic.DyOutput`
for a dynamic export (``threshold`` fed to the graph when it takes one), a prediction tensor
otherwise. End-to-end exports (NMS in the graph) return per-image detections (k, 6) =
[x1, y1, x2, y2, score, cls] in place of the prediction tensor; :class:`utils.inference.predictor.Predictor`
then skips its own NMS. A graph with a static batch runs any batch in padded chunks.
``kind`` says what was exported (``dy``, ``dualres`` or ``plain``) and ``route_names`` what its
two routes are called (``('low', 'high')`` for DualRes), as the PyTorch models' attribute.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from models.dynamic import DyOutput
from utils.validate import describe_file

LOGGER = logging.getLogger(__name__)
FORMAT = "dydet-onnx-v1"


class OnnxModel:
    """An exported detector run by ONNX Runtime (graph optimisation level ALL)."""

    fused = True
    training = False

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {str(self.path)!r} not found")
        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self._providers(ort))
        except Exception as e:  # ORT raises its own exception types
            raise ValueError(f"{self.path}: not an ONNX model ({describe_file(self.path, 'truncated or corrupt protobuf')})") from e
        self.meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self._configure(self.meta)

    def _providers(self, ort) -> list:
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                return [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
            LOGGER.warning("onnxruntime has no CUDA provider here; running %s on the CPU", self.path.name)
        return ["CPUExecutionProvider"]

    def _configure(self, meta: dict) -> None:
        self.names = list(meta["names"])
        self.stride = torch.tensor(meta["stride"], dtype=torch.float32)
        self.img_size = tuple(int(v) for v in meta["img_size"])
        self.batch = meta["batch"]
        self.is_dynamic = bool(meta["dynamic"])
        self.kind = str(meta.get("kind") or ("dy" if self.is_dynamic else "plain"))  # older files: no kind
        self.route_names = tuple(meta.get("route_names") or ("easy", "hard"))  # ('low', 'high') for DualRes
        self.route = meta["route"]
        self.threshold = meta["threshold"]
        self.threshold_input = bool(meta["threshold_input"])
        self.end2end = meta["end2end"] is not None
        self.nms = dict(meta["end2end"] or {})
        self.gflops = dict(meta.get("gflops") or {})
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.info = {"format": "onnx", "names": list(self.names), "thresholds": dict(meta.get("thresholds") or {}),
                     "meta": meta, "extra": {}, "not_loaded": [], "dropped": [], "path": str(self.path)}

    # ---- torch.nn.Module look-alikes ------------------------------------------------------------
    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise RuntimeError("an ONNX model cannot be trained")
        return self

    def __repr__(self) -> str:
        if not hasattr(self, "meta"):  # failed while loading
            return f"OnnxModel({self.path.name})"
        kind = "dynamic" if self.is_dynamic else f"route={self.route}"
        return f"OnnxModel({self.path.name}, {kind}, img_size={self.img_size}, batch={self.batch or 'dynamic'})"

    # ---- inference --------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, threshold: float | None = None):
        """Like the PyTorch model: DyOutput (dynamic exports) or the prediction."""
        self._check_input(x)
        feed_thr = self._threshold(threshold)
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._run_batches(arr, feed_thr)
        pred = self._split(out[0], len(arr)) if self.end2end else out[0]
        if not self.is_dynamic:
            return pred
        return DyOutput(pred, out[self.output_names.index("phi")], out[self.output_names.index("hard")])

    forward = __call__

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.path.name} takes (batch, 3, h, w) images, got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) != self.img_size:
            h, w = self.img_size
            raise ValueError(f"{self.path.name} was exported for {h}x{w} inputs but got "
                             f"{x.shape[2]}x{x.shape[3]}; resize the input or re-export with --img-size")

    def _threshold(self, threshold: float | None) -> float | None:
        if not self.is_dynamic:
            return None
        t = float(self.threshold if threshold is None else threshold)
        baked = float(self.meta["threshold"])
        if not self.threshold_input and abs(t - baked) > 1e-9:
            raise ValueError(f"{self.path.name} has routing threshold {baked:g} built in, so threshold {t:g} "
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
            parts.append(self._trim(self.session.run(self.output_names, feed), start, n))
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


def read_metadata(props: dict[str, str], path: Path) -> dict:
    """The export metadata stored in an ONNX model's metadata_props (values are JSON)."""
    meta = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value  # not ours
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a DynamicDet export (no {FORMAT} metadata); export it with export.py")
    return meta
