"""Shared test fixtures: paths to the reference manifests and small helpers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def reference_keys(name: str) -> dict[str, list[int]]:
    """Official checkpoint key -> shape manifest, or skip when shared/ is not beside the repo."""
    path = REFERENCE / f"{name}.official-keys.json"
    if not path.is_file():
        pytest.skip(f"reference manifest {path} not available (shared/ must sit beside the repo)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (for fusion tests)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
