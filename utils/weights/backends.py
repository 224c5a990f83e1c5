"""One entry point for every kind of weights: our checkpoints, official releases, ONNX and OpenVINO exports.

``load_model`` resolves model-zoo names (downloading them when missing, see
:mod:`utils.weights.downloads`), then returns a PyTorch model, an ONNX Runtime backend or an
OpenVINO backend with the same calling convention, so detect.py, test.py, the Python API and the
benchmark never care which one they hold.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from models.zoo import zoo_entry
from utils.defaults import IMG_SIZE
from utils.runtime.openvino_model import is_openvino
from utils.torch_utils import select_device
from utils.weights.checkpoints import load_checkpoint
from utils.validate import check_img_size
from utils.weights.downloads import attempt_download

LOGGER = logging.getLogger(__name__)


def is_onnx(weights: str | Path) -> bool:
    return Path(weights).suffix.lower() == ".onnx"


def load_model(weights: str | Path, cfg: str | None = None, device: str | torch.device = "",
               nc: int | None = None, half: bool = False) -> tuple[torch.nn.Module, dict]:
    """``(model, info)`` for ``weights``; info as from :func:`utils.weights.checkpoints.load_checkpoint`.

    Zoo names (``dy-yolov7.pt`` ...) are found locally or downloaded, and imply their config
    when ``cfg`` is not given. ``.onnx`` files run with ONNX Runtime, an ``.xml`` IR or an
    ``*_openvino/`` folder with OpenVINO. ``half`` compiles an OpenVINO IR for bf16 (refused on a
    CPU without native bf16); PyTorch models get their half precision from the Predictor.
    """
    dev = select_device(device)
    if is_openvino(weights):
        from utils.runtime.openvino_model import OpenVinoModel
        model = OpenVinoModel(weights, device=dev, precision="bf16" if half else None)
        return model, model.info
    if is_onnx(weights):
        from utils.runtime.onnx_model import OnnxModel
        if not Path(weights).is_file():
            raise FileNotFoundError(f"ONNX file {str(weights)!r} not found")
        if half:
            raise ValueError(f"--half: ONNX Runtime runs {Path(weights).name} in fp32 only here; for bf16 on the "
                             "CPU export it with --include openvino and run the IR with --half")
        model = OnnxModel(weights, device=dev)
        return model, model.info
    path = attempt_download(weights)
    entry = zoo_entry(path)
    release_cfg = entry.cfg if entry is not None and entry.url else None  # shipped files carry their own
    model, info = load_checkpoint(path, cfg=cfg or release_cfg, nc=nc, device=dev)
    if not info.get("img_size") and entry is not None:
        info["img_size"] = entry.img_size  # official releases: their training size
    return model, info


def input_size(img_size: int | None, info: dict) -> int:
    """``img_size`` if given, else the weights' own size (training size, export size), else the default.

    A model trained at 128 px runs at 128 unless asked otherwise (an export's (h, w): its long side).
    """
    if img_size:
        return int(img_size)
    return own_img_size(info) or IMG_SIZE


def own_img_size(info: Mapping) -> int | None:
    """The input size the weights were trained (or exported) at, from their info; None if unknown."""
    own = info.get("img_size")
    if isinstance(own, (list, tuple)):
        own = max(int(v) for v in own)
    return int(own) if own else None


def settle_img_size(asked: int | None, info: Mapping, stride: int = 32) -> int:
    """The input size a script or the API runs (or trains, or calibrates) a model at.

    The model's own setting is the default: ``asked`` when given (rounded up to a stride multiple,
    with a warning), else the size the weights were trained at, else 640. A size that differs from
    the weights' own is used as asked, with one line saying so.
    """
    size = check_img_size(asked, stride)
    own = own_img_size(info)
    if size is None:
        return own or IMG_SIZE
    if own and size != own:
        LOGGER.warning("warning: --img-size %d differs from the %d px the weights were trained at", size, own)
    return size
