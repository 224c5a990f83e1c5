"""Keep the calling thread's signal alternate stack across native code that swaps it.

OpenVINO's CPU plugin installs an alternate signal stack of its own on the thread that compiles
a model and puts the previous one back when the compiled model goes away. With two compiled
models released out of order (two ``ov.Core`` objects, an fp32 and an INT8 IR, NNCF's own
calibration model) the thread is left pointing at a stack that has been unmapped. Python runs
every signal handler with ``SA_ONSTACK``, so the next handled signal on that thread (PyTorch's
DataLoader handles ``SIGCHLD``: any ``subprocess`` call, e.g. ``git`` for a checkpoint's
metadata) kills the process with a segmentation fault far from its cause.

:func:`kept_sigaltstack` records the stack before such a call and restores it afterwards, so
what OpenVINO later "restores" is always the stack Python's faulthandler owns for the whole
process. On platforms without ``sigaltstack`` (not Linux/macOS) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache


class StackT(ctypes.Structure):
    """``stack_t`` of <signal.h> (Linux and macOS field order)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc if hasattr(libc, "sigaltstack") else None
    except OSError:
        return None


def current_sigaltstack() -> StackT | None:
    """The calling thread's alternate signal stack (None where it cannot be read)."""
    libc = _libc()
    if libc is None:
        return None
    stack = StackT()
    return stack if libc.sigaltstack(None, ctypes.byref(stack)) == 0 else None


@contextmanager
def kept_sigaltstack() -> Iterator[None]:
    """Run the block, then put back the alternate signal stack the thread had before it."""
    before = current_sigaltstack()
    try:
        yield
    finally:
        after = current_sigaltstack()
        if before is not None and after is not None and (after.ss_sp, after.ss_size) != (before.ss_sp, before.ss_size):
            _libc().sigaltstack(ctypes.byref(before), None)
