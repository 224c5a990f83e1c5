"""DualRes resolution router: a small CNN scoring each image; high resolution when φ > threshold.

The router sees a thumbnail of the (letterboxed, [0, 1]) network input, resized to its own
``input_size`` with :func:`models.resize.resize` and normalised with the ImageNet statistics
that torchvision's pre-trained backbones expect. A feature extractor, global average pooling
and one linear layer give one logit per image; φ = sigmoid(logit).

Kinds:

* ``mobilenet_v3_small`` / ``mobilenet_v3_large``: torchvision's ``.features`` (built with
  ``weights=None``; pass ``backbone_weights`` = a torchvision state_dict file to start from
  pre-trained weights: a classification model's ``features.*``, a Faster R-CNN MobileNetV3's
  ``backbone.body.*`` as in the DualRes paper, or the bare features' keys);
* ``thumb``: four strided 3x3 conv + BN + ReLU blocks (width w, 2w, 4w, 8w), meant for 64-128 px
  thumbnails; a fraction of MobileNet's cost.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.resize import resize

ROUTER_KINDS = ("thumb", "mobilenet_v3_small", "mobilenet_v3_large")
DEFAULT_INPUT_SIZE = {"thumb": 128, "mobilenet_v3_small": 224, "mobilenet_v3_large": 224}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE_PREFIXES = ("module.", "backbone.body.", "features.")


def thumb_features(width: int = 16, stages: int = 4) -> tuple[nn.Sequential, int]:
    """``stages`` blocks of stride-2 3x3 conv, BN, ReLU doubling the width; (module, out channels)."""
    layers, c_in = [], 3
    for i in range(stages):
        c_out = width * 2 ** i
        layers.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                                    nn.ReLU(inplace=True)))
        c_in = c_out
    return nn.Sequential(*layers), c_in


def mobilenet_features(kind: str) -> tuple[nn.Sequential, int]:
    """torchvision MobileNetV3 ``.features`` without pre-trained weights; (module, out channels)."""
    from torchvision.models import mobilenet_v3_large, mobilenet_v3_small
    build = {"mobilenet_v3_small": mobilenet_v3_small, "mobilenet_v3_large": mobilenet_v3_large}[kind]
    features = build(weights=None).features
    return features, int(features[-1].out_channels)


def backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision state_dict file's backbone tensors with their prefix removed (see module doc)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    out = {}
    for k, v in state.items():
        for prefix in BACKBONE_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.split(".")[0].isdigit():  # features layers are numbered; heads, FPN, classifier are not
            out[k] = v
    return out


def load_backbone(features: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``features`` strictly (BN counters missing from frozen-BN files are kept)."""
    state, own = backbone_state(path), features.state_dict()
    for k in own:
        if k.endswith("num_batches_tracked"):
            state.setdefault(k, own[k])
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: backbone weights do not match ({len(missing)} missing, e.g. {missing[:3]}; "
                         f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    features.load_state_dict(state, strict=True)


class ResolutionRouter(nn.Module):
    """Thumbnail -> features -> global average pool -> linear -> one logit per image."""

    def __init__(self, kind: str = "thumb", input_size: int | None = None, width: int = 16,
                 backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        if kind not in ROUTER_KINDS:
            raise ValueError(f"unknown router kind {kind!r}; choose from {', '.join(ROUTER_KINDS)}")
        self.kind, self.width = kind, int(width)
        self.input_size = int(input_size or DEFAULT_INPUT_SIZE[kind])
        if self.input_size < 16:
            raise ValueError(f"router input_size must be >= 16, got {self.input_size}")
        self.features, channels = thumb_features(self.width) if kind == "thumb" else mobilenet_features(kind)
        if backbone_weights:
            load_backbone(self.features, backbone_weights)
        self.fc = nn.Linear(channels, 1)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)  # φ starts at 0.5 for every image
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.fused = False

    @property
    def cfg(self) -> dict:
        """Plain description that rebuilds the architecture (weights are in the state_dict)."""
        return {"kind": self.kind, "input_size": self.input_size, "width": self.width}

    def thumbnail(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (b, 3, h, w) -> the router's input (b, 3, s, s), still in [0, 1]."""
        return resize(x, (self.input_size, self.input_size))

    def logits_from_thumbnail(self, t: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores (b,) of thumbnails from :meth:`thumbnail`."""
        f = self.features((t - self.mean.to(t.dtype)) / self.std.to(t.dtype))
        return self.fc(f.mean(dim=(2, 3))).flatten()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores (b,) of full-size images."""
        return self.logits_from_thumbnail(self.thumbnail(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """φ in (0, 1) per image: the score for high resolution."""
        return self.logits(x).sigmoid()

    @torch.no_grad()
    def fuse(self) -> "ResolutionRouter":
        """Fold each BatchNorm into the convolution before it (inference only, in place)."""
        for seq in [m for m in self.modules() if isinstance(m, nn.Sequential)]:
            for i in range(len(seq) - 1):
                conv, bn = seq[i], seq[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(conv.eval(), bn.eval()), nn.Identity()
        self.fused = True
        return self.eval()
