"""Restricted loading of legacy pickled checkpoints (official YOLOv7 ``*.pt`` files).

Official YOLOv7 releases pickle a whole ``models.yolo.Model`` object. Loading such a file
with plain ``pickle`` would import and run whatever the file names, so instead:

1. ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists every global the file needs
   beyond torch's own tensor machinery;
2. any global outside :data:`ALLOWED_PREFIXES` / :data:`ALLOWED_NAMES` is refused
   (:class:`CheckpointError` names it);
3. every allowed global is mapped to an inert :class:`Stub` subclass that only records its
   arguments and state, and the file is read by ``torch.load(weights_only=True)``.

No class or function named by the file is ever imported or called. The allowlist only admits
names that describe model structure. ``__main__`` is deliberately *not* allowed: official
checkpoints never reference it, and a ``__main__`` global means an object defined in someone's
ad-hoc script, which says nothing we could use. :func:`module_tree_state_dict` then recovers the
usual flat ``state_dict`` from the stubbed ``nn.Module`` tree.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ALLOWED_NAMES", "ALLOWED_PREFIXES", "CheckpointError", "Stub", "check_globals", "is_allowed",
    "load_restricted", "module_tree_state_dict", "unsafe_globals",
]

# Globals whose module path starts with one of these only describe model structure.
ALLOWED_PREFIXES: tuple[str, ...] = ("models.", "utils.", "torch.nn.modules.", "numpy.dtypes.")
# Exact names: numpy scalars / arrays / dtypes (e.g. YOLOv7's ``best_fitness``).
ALLOWED_NAMES: frozenset[str] = frozenset({
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.ndarray", "numpy.dtype",
})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, is unsafe, or does not match the model."""


class Stub:
    """Inert stand-in for a pickled global: construction, calls and state only store data."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        """Record the constructor arguments; nothing else happens."""
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = (args, kwargs)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Arguments were already recorded by ``__new__``."""

    def __call__(self, *args: Any, **kwargs: Any) -> "Stub":
        """Record the call's arguments and return self."""
        self.__dict__.setdefault("_stub_calls", []).append((args, kwargs))
        return self

    def __setstate__(self, state: Any) -> None:
        """Dict state (or pickle's (dict, slots) pair) goes into ``__dict__``; anything else aside."""
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        if all(isinstance(p, (dict, type(None))) for p in parts):
            for part in parts:
                self.__dict__.update(part or {})
        else:
            self.__dict__["_stub_state"] = state

    def __repr__(self) -> str:
        return f"<stub {self.global_name}>"


def _stub_class(name: str) -> type[Stub]:
    """A fresh Stub subclass recording the global ``name`` it stands for."""
    return type(f"Stub[{name}]", (Stub,), {"global_name": name, "__module__": __name__})


def is_allowed(name: str) -> bool:
    """True if the global ``name`` may be replaced by a stub."""
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


def unsafe_globals(path: str | Path) -> list[str]:
    """Globals in the zip checkpoint ``path`` that torch's weights-only loader does not know."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, pickle.UnpicklingError, EOFError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot scan the pickle for globals ({e}); only zip-format "
                              "torch.save files (torch >= 1.6) are read safely") from e


def check_globals(names: list[str], path: str | Path = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming every global outside the allowlist."""
    bad = [n for n in names if not is_allowed(n)]
    if bad:
        raise CheckpointError(
            f"{path}: refusing to load, the pickle references {len(bad)} global(s) that do not "
            f"describe model structure and could run code: {', '.join(bad)}")


def load_restricted(path: str | Path) -> Any:
    """Load ``path`` without running code from it; allowed non-torch globals become stubs."""
    names = unsafe_globals(path)
    check_globals(names, path)
    stubs = [(_stub_class(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: restricted unpickling failed: {e}") from e


def _children(state: Mapping, key: str) -> Mapping:
    """``_parameters`` / ``_buffers`` / ``_modules`` of a module's state (empty if absent)."""
    value = state.get(key) or {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"pickled module has a non-dict {key!r}")
    return value


def _tensors(state: Mapping, prefix: str) -> dict[str, torch.Tensor]:
    """Parameters then persistent buffers of one module, skipping ``None`` entries."""
    skip = state.get("_non_persistent_buffers_set") or set()
    items = list(_children(state, "_parameters").items())
    items += [(k, v) for k, v in _children(state, "_buffers").items() if k not in skip]
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        if v is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"pickled module entry {prefix + k!r} is {type(v).__name__}, not a tensor")
        out[prefix + k] = v.detach()
    return out


def module_tree_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flat ``state_dict`` (dotted names) of a stubbed or real ``nn.Module`` tree."""
    out: dict[str, torch.Tensor] = {}
    _walk(obj, prefix, frozenset(), out)
    return out


def _walk(node: Any, prefix: str, ancestors: frozenset[int], out: dict[str, torch.Tensor]) -> None:
    """Depth-first ``state_dict`` order: own tensors, then children; refuses cycles."""
    if id(node) in ancestors or len(ancestors) > 64:
        raise CheckpointError(f"pickled module tree is cyclic or too deep at {prefix!r}")
    state = getattr(node, "__dict__", None)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{prefix or 'root'!r} is {type(node).__name__}, not a module")
    out.update(_tensors(state, prefix))
    for name, child in _children(state, "_modules").items():
        if child is not None:
            _walk(child, f"{prefix}{name}.", ancestors | {id(node)}, out)
