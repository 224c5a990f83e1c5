"""Devices, EMA and run-directory helpers."""
from __future__ import annotations

import pytest
import torch

from utils.paths import increment_path
from utils.torch_utils import ModelEMA, select_device


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("") in (torch.device("cpu"), torch.device("cuda:0"))
    with pytest.raises(ValueError, match="invalid --device"):
        select_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("0")


def test_ema_moves_towards_the_model() -> None:
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # decay 0.5 from the first update on
    start = ema.ema.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.ema.weight, start + 0.5)
    assert not ema.ema.weight.requires_grad and ema.updates == 1


def test_increment_path(tmp_path) -> None:
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp2").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp3"
    assert increment_path(tmp_path / "exp", exist_ok=True) == tmp_path / "exp"


def test_latest_checkpoint(tmp_path) -> None:
    import os
    import time as _time

    from utils.paths import latest_checkpoint
    with pytest.raises(FileNotFoundError, match="no \\*/weights/last.pt"):
        latest_checkpoint(tmp_path)
    for i, name in enumerate(("a", "b")):
        w = tmp_path / name / "weights"
        w.mkdir(parents=True)
        (w / "last.pt").write_bytes(b"x")
        os.utime(w / "last.pt", (_time.time() + i, _time.time() + i))
    assert latest_checkpoint(tmp_path) == tmp_path / "b" / "weights" / "last.pt"


def test_ema_leaves_frozen_entries_bit_identical() -> None:
    from utils.torch_utils import train_keep_frozen_bn
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    for p in list(model[0].parameters()) + list(model[1].parameters()):
        p.requires_grad_(False)
    train_keep_frozen_bn(model)
    assert not model[1].training and model[2].training
    ema = ModelEMA(model, decay=0.5, tau=1e-9)
    assert ema.frozen == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                          "1.num_batches_tracked"}
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        model(torch.rand(2, 3, 4, 4))  # eval-mode BN: running statistics unchanged
        model[2].weight.add_(1.0)
    ema.update(model)
    after = ema.ema.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in ema.frozen)
    torch.testing.assert_close(after["2.weight"], before["2.weight"] + 0.5)
