"""Random state of a training run, captured in last.pt so that ``--resume`` continues bit-exactly.

:func:`capture_rng` takes, at the end of an epoch, every generator the next epoch draws from:
torch's (CPU, and CUDA when in use), numpy's and Python's global ones, the training loader's
``torch.Generator`` (shuffling order and worker seeds) and the dataset's augmentation
``numpy.random.Generator``. :func:`restore_rng` puts them back before the resumed epoch, so a run
killed at any moment and resumed from its last.pt ends with the same weights as one never
interrupted (same seed, same machine and thread count).

Limits: with ``workers > 0`` the augmentation generators live in the loader's worker processes,
which no checkpoint can read, so a resumed run draws other augmentations (it still converges
the same way, but not bit-exactly); on CUDA, cuDNN's nondeterministic kernels can differ even
between two uninterrupted runs. Bit-exact resume is guaranteed for ``workers=0`` on CPU.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "seed_all"]


def seed_all(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators (a run's start is then reproducible)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng(loader: Any = None) -> dict:
    """The random state as plain values and tensors (storable in a ``dydet-v1`` checkpoint)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_global(), "python": _python_global()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["loader"] = generator.get_state()
    dataset_rng = getattr(getattr(loader, "dataset", None), "rng", None)
    if isinstance(dataset_rng, np.random.Generator):
        state["dataset"] = _plain(dataset_rng.bit_generator.state)
    return state


def restore_rng(state: dict, loader: Any = None) -> None:
    """Put back what :func:`capture_rng` took (entries it could not take are left alone)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "loader" in state and isinstance(getattr(loader, "generator", None), torch.Generator):
        loader.generator.set_state(state["loader"])
    dataset_rng = getattr(getattr(loader, "dataset", None), "rng", None)
    if "dataset" in state and isinstance(dataset_rng, np.random.Generator):
        dataset_rng.bit_generator.state = state["dataset"]


def _numpy_global() -> dict:
    """numpy's legacy global MT19937 state with its key as an int64 tensor."""
    s = np.random.get_state(legacy=False)
    return {"key": torch.from_numpy(s["state"]["key"].astype(np.int64)), "pos": int(s["state"]["pos"]),
            "has_gauss": int(s["has_gauss"]), "gauss": float(s["gauss"])}


def _numpy_state(saved: dict) -> dict:
    return {"bit_generator": "MT19937", "has_gauss": saved["has_gauss"], "gauss": saved["gauss"],
            "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]}}


def _python_global() -> tuple:
    version, internal, gauss = random.getstate()
    return version, list(internal), gauss


def _plain(obj: Any) -> Any:
    """A bit generator's state with numpy scalars and arrays made plain Python."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [int(v) for v in obj.ravel()]
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
