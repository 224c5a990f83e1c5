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

from utils.runtime.backend import ExportBackend
from utils.runtime.saturation import warn_if_unsafe
from utils.validate import describe_file

LOGGER = logging.getLogger(__name__)
FORMAT = "dydet-onnx-v1"


class OnnxModel(ExportBackend):
    """An exported detector run by ONNX Runtime (graph optimisation level ALL)."""

    format = "onnx"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {str(self.path)!r} not found")
        self.device = torch.device(device)
        self.threads = int(threads) if threads else None
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
        super()._configure(meta)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.int8 = meta.get("quantization")  # the QDQ record of an INT8 file, else None
        warn_if_unsafe(self.int8, self.file_name)

    def __repr__(self) -> str:
        if not hasattr(self, "meta"):  # failed while loading
            return f"OnnxModel({self.path.name})"
        kind = "dynamic" if self.is_dynamic else f"route={self.route}"
        return f"OnnxModel({self.path.name}, {kind}, img_size={self.img_size}, batch={self.batch or 'dynamic'})"

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One raw inference: numpy inputs by name -> outputs in ``output_names`` order."""
        return self.session.run(self.output_names, feed)


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
