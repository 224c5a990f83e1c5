"""Restricted unpickling of legacy YOLOv7 checkpoints: stubs only, traps refused and never run."""
from __future__ import annotations

import builtins
import contextlib
import json
import os
import subprocess
import sys
import types
import zlib
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.conftest import REFERENCE
from utils.weights.safe_pickle import (
    CheckpointError,
    Stub,
    check_globals,
    is_allowed,
    load_restricted,
    module_tree_state_dict,
    unsafe_globals,
)

FAKE_MODULES = ("models", "models.yolo", "models.common")
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked", "anchors", "anchor_grid")


# ---- helpers shared with test_checkpoints.py ---------------------------------------------------
def manifest(name: str) -> dict[str, list[int]]:
    """name -> shape of an official checkpoint (tests/reference/)."""
    path = REFERENCE / f"{name}.official-keys.json"
    if not path.is_file():
        pytest.fail(f"reference key manifest {path} is missing")
    return json.loads(path.read_text())


def fake_tensor(key: str, shape: Sequence[int], cheap: bool = False, seed: int = 0) -> torch.Tensor:
    """fp16 tensor for ``key`` (int64 counter for BN); ``cheap`` = one stored value, expanded."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(7, dtype=torch.int64)
    if cheap:
        return torch.full((1,) * len(shape), 0.5, dtype=torch.float16).expand(*shape)
    g = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
    return torch.randn(*shape, generator=g).to(torch.float16)


def fake_state(keys: Mapping[str, Sequence[int]], cheap: bool = False) -> dict[str, torch.Tensor]:
    return {k: fake_tensor(k, s, cheap) for k, s in keys.items()}


@contextlib.contextmanager
def fake_yolo_modules() -> Iterator[types.SimpleNamespace]:
    """Temporarily install fake ``models.yolo`` / ``models.common`` (our package is also ``models``)."""
    saved = {name: sys.modules.get(name) for name in FAKE_MODULES}
    pkg, yolo, common = (types.ModuleType(n) for n in FAKE_MODULES)
    classes = {}
    for module, names in ((yolo, ("Model", "IDetect", "IAuxDetect")), (common, ("Conv", "Concat", "Node"))):
        for cls_name in names:
            cls = type(cls_name, (nn.Module,), {"__module__": module.__name__})
            setattr(module, cls_name, cls)
            classes[cls_name] = cls
    pkg.yolo, pkg.common = yolo, common
    sys.modules.update(dict(zip(FAKE_MODULES, (pkg, yolo, common))))
    try:
        yield types.SimpleNamespace(**classes)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def attach_tensor(root: nn.Module, path: list[str], tensor: torch.Tensor, node_cls: type) -> None:
    """Create intermediate ``node_cls`` modules along ``path`` and register the tensor at its end."""
    for part in path[:-1]:
        if part not in root._modules:
            root.add_module(part, node_cls())
        root = root._modules[part]
    if path[-1] in BUFFER_NAMES:
        root.register_buffer(path[-1], tensor)
    else:
        root.register_parameter(path[-1], nn.Parameter(tensor, requires_grad=False))


def fake_yolov7_model(ns: types.SimpleNamespace, state: Mapping[str, torch.Tensor],
                      names: list[str] | None = None) -> nn.Module:
    """A pickle-able ``models.yolo.Model`` whose state_dict is exactly ``state`` (``model.{i}.*``)."""
    last = max(int(k.split(".")[1]) for k in state)
    layers = []
    for i in range(last + 1):
        keys = [k for k in state if k.split(".")[1] == str(i)]
        if not keys:
            layers.append(ns.Concat())
        elif any(k.endswith(".anchors") for k in keys):
            layers.append(ns.IAuxDetect() if any(".m2." in k for k in keys) else ns.IDetect())
        else:
            layers.append(ns.Conv())
            layers[-1].act = nn.SiLU()
    model = ns.Model()
    model.model = nn.Sequential(*layers)
    for key, tensor in state.items():
        attach_tensor(model.model, key.split(".")[1:], tensor, ns.Node)
    model.yaml = {"nc": 80, "backbone": [[-1, 1, "Conv", [32, 3, 2]]]}
    model.names = names or [f"class{i}" for i in range(80)]
    model.stride = torch.tensor([8.0, 16.0, 32.0])  # plain attribute, not a buffer
    return model


def save_fake_yolov7(path: Path, state: Mapping[str, torch.Tensor], names: list[str] | None = None,
                     ema: bool = False) -> Path:
    """Write an official-style YOLOv7 checkpoint (pickled model) holding ``state``."""
    with fake_yolo_modules() as ns:
        model = fake_yolov7_model(ns, state, names)
        ckpt = {"epoch": -1, "best_fitness": np.float64(0.51), "training_results": None,
                "model": model, "ema": None, "updates": None, "optimizer": None, "wandb_id": None}
        if ema:
            ckpt["model"] = fake_yolov7_model(ns, {k: torch.zeros_like(v) for k, v in state.items()}, names)
            ckpt["ema"] = model
        torch.save(ckpt, path)
    return path


class _Trap:
    """Pickles as ``func(*args)``: running it would create a file."""

    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def trap_cases(marker: Path) -> dict[str, _Trap]:
    return {
        "os.system": _Trap(os.system, (f"touch {marker}",)),
        "builtins.eval": _Trap(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": _Trap(subprocess.Popen, (["touch", str(marker)],)),
    }


# ---- loading legitimate files ------------------------------------------------------------------
def test_fake_yolov7_tiny_round_trip(tmp_path: Path) -> None:
    keys = manifest("yolov7-tiny")
    state = fake_state(keys)
    path = save_fake_yolov7(tmp_path / "yolov7-tiny.pt", state)
    ckpt = load_restricted(path)
    assert isinstance(ckpt["model"], Stub) and ckpt["model"].global_name == "models.yolo.Model"
    assert not isinstance(ckpt["model"], nn.Module)
    assert isinstance(ckpt["best_fitness"], Stub) and ckpt["epoch"] == -1
    out = module_tree_state_dict(ckpt["model"])
    assert list(out) == list(keys)
    assert {k: list(v.shape) for k, v in out.items()} == keys
    assert all(torch.equal(out[k], state[k]) for k in keys)
    assert out["model.0.conv.weight"].dtype == torch.float16


def test_globals_are_listed_and_allowed(tmp_path: Path) -> None:
    path = save_fake_yolov7(tmp_path / "m.pt", fake_state({"model.0.conv.weight": [4, 3, 3, 3]}))
    names = unsafe_globals(path)
    assert {"models.yolo.Model", "models.common.Conv", "torch.nn.modules.container.Sequential"} <= set(names)
    check_globals(names, path)  # all describe structure


def test_loading_never_imports_the_named_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_fake_yolov7(tmp_path / "m.pt", fake_state({"model.0.conv.weight": [4, 3, 3, 3]}))
    for name in FAKE_MODULES:  # any import of models.* during loading would now fail loudly
        monkeypatch.setitem(sys.modules, name, None)
    ckpt = load_restricted(path)
    assert list(module_tree_state_dict(ckpt["model"])) == ["model.0.conv.weight"]


def test_allowlist() -> None:
    for ok in ("models.yolo.Model", "utils.activations.SiLU", "torch.nn.modules.conv.Conv2d",
               "numpy.core.multiarray.scalar", "numpy._core.multiarray._reconstruct", "numpy.dtype",
               "numpy.dtypes.Float64DType"):
        assert is_allowed(ok), ok
    for bad in ("__main__.Model", "posix.system", "builtins.eval", "builtins.getattr", "numpy.load",
                "torch.load", "subprocess.Popen", "modelsx.Model", "torch.nn.functional.silu"):
        assert not is_allowed(bad), bad
    with pytest.raises(CheckpointError, match="__main__.Model"):
        check_globals(["models.yolo.Model", "__main__.Model"])


# ---- booby traps -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_trap_is_refused_and_not_run(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "trap.pt"
    torch.save({"model": trap_cases(marker)[case], "epoch": 0}, path)
    # torch reports names after its py2->py3 remapping, e.g. subprocess.Popen as commands.Popen
    with pytest.raises(CheckpointError, match=case.split(".")[1]) as err:
        load_restricted(path)
    assert "refusing" in str(err.value)
    assert not marker.exists()


def test_trap_inside_an_allowed_model_tree_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with fake_yolo_modules() as ns:
        model = fake_yolov7_model(ns, fake_state({"model.0.conv.weight": [4, 3, 3, 3]}))
        model.model[0].payload = trap_cases(marker)["os.system"]
        torch.save({"model": model}, tmp_path / "trap.pt")
    with pytest.raises(CheckpointError, match="system"):
        load_restricted(tmp_path / "trap.pt")
    assert not marker.exists()


def test_spoofed_allowed_name_stays_inert(tmp_path: Path) -> None:
    """A function disguised as ``models.common.Conv`` is replaced by a stub, never called."""
    marker = tmp_path / "pwned"

    def payload(cmd: str) -> None:
        os.system(cmd)

    payload.__module__, payload.__qualname__ = "models.common", "Conv"
    with fake_yolo_modules():
        sys.modules["models.common"].Conv = payload
        torch.save({"model": _Trap(payload, (f"touch {marker}",))}, tmp_path / "spoof.pt")
    ckpt = load_restricted(tmp_path / "spoof.pt")
    assert isinstance(ckpt["model"], Stub) and ckpt["model"]._stub_args == ((f"touch {marker}",), {})
    assert not marker.exists()


def test_protocol4_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": trap_cases(marker)["os.system"]}, tmp_path / "p4.pt", pickle_protocol=4)
    with pytest.raises(CheckpointError):
        load_restricted(tmp_path / "p4.pt")
    assert not marker.exists()


def test_non_checkpoint_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="x.pt"):
        load_restricted(tmp_path / "x.pt")


# ---- module_tree_state_dict --------------------------------------------------------------------
def test_module_tree_matches_torch_state_dict() -> None:
    shared = nn.Conv2d(3, 4, 1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), shared)
    net.add_module("again", shared)  # shared modules appear under both names, as in torch
    net.register_buffer("scratch", torch.zeros(2), persistent=False)
    net.add_module("absent", None)
    ours = module_tree_state_dict(net)
    ref = net.state_dict()
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert "scratch" not in ours and "0.bias" not in ours


def test_module_tree_refuses_cycles_and_non_tensors() -> None:
    a, b = nn.Module(), nn.Module()
    a.add_module("b", b)
    b._modules["a"] = a
    with pytest.raises(CheckpointError, match="cyclic"):
        module_tree_state_dict(a)
    c = nn.Module()
    c._parameters["w"] = "not a tensor"
    with pytest.raises(CheckpointError, match="not a tensor"):
        module_tree_state_dict(c)
