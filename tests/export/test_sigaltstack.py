"""OpenVINO leaves a dangling signal stack behind; compiling through compile_cpu must not (CI segfault)."""
from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils.sigaltstack import StackT, _libc, current_sigaltstack, kept_sigaltstack

ROOT = Path(__file__).resolve().parents[2]

# Two compiled models from two Cores, released first-in first-out, then a handled SIGCHLD
# (what PyTorch's DataLoader installs) from a subprocess: the sequence that crashed CI.
SCENARIO = textwrap.dedent("""
    import gc, signal, subprocess, sys
    sys.path.insert(0, {root!r})
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from utils.runtime.openvino_model import compile_cpu

    x = ops.parameter([1, 3, 32, 32], np.float32, name="x")
    w = ops.constant(np.random.default_rng(0).random((8, 3, 3, 3), dtype=np.float32))
    model = ov.Model([ops.relu(ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1]))], [x], "conv")
    compile = {compile}
    core1 = ov.Core(); a = compile(model, core1)
    core2 = ov.Core(); b = compile(model, core2)
    del a, core1; gc.collect(); del b, core2; gc.collect()
    signal.signal(signal.SIGCHLD, lambda *args: None)
    for _ in range(3):
        subprocess.run(["true"], check=True)
    print("survived")
""")


def run_scenario(compile_expr: str) -> subprocess.CompletedProcess:
    code = SCENARIO.format(root=str(ROOT), compile=compile_expr)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_compile_cpu_survives_out_of_order_release() -> None:
    out = run_scenario('lambda m, core: compile_cpu(m, {"INFERENCE_PRECISION_HINT": "f32"}, core)')
    assert out.returncode == 0 and "survived" in out.stdout, (out.returncode, out.stderr[-2000:])


SWAP_PROBE = textwrap.dedent("""
    import faulthandler, sys
    sys.path.insert(0, {root!r})
    faulthandler.enable()  # owns the thread's signal stack, as under pytest
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    {imports}
    from utils.sigaltstack import current_sigaltstack

    x = ops.parameter([1, 3, 32, 32], np.float32, name="x")
    w = ops.constant(np.random.default_rng(0).random((8, 3, 3, 3), dtype=np.float32))
    model = ov.Model([ops.relu(ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1]))], [x], "conv")
    core = ov.Core()
    before = current_sigaltstack()
    compiled = ({compile})(model, core)  # the first compile on this thread: where OpenVINO swaps
    after = current_sigaltstack()
    print((before.ss_sp, before.ss_size) == (after.ss_sp, after.ss_size))
""")


GUARDED = "from utils.runtime.openvino_model import compile_cpu"


@pytest.mark.parametrize("imports,compile_expr,kept", [
    ("", 'lambda m, core: core.compile_model(m, "CPU")', False),
    (GUARDED, 'lambda m, core: compile_cpu(m, {"INFERENCE_PRECISION_HINT": "f32"}, core)', True)])
def test_raw_compile_model_swaps_the_signal_stack_and_compile_cpu_does_not(imports: str, compile_expr: str,
                                                                           kept: bool) -> None:
    """The library behaviour the guard exists for (if OpenVINO stops it, compile_cpu's guard is moot).

    Whether the dangling stack then crashes depends on the CPU: on an Intel Xeon with AMX the
    scenario above segfaulted (the released stack was unmapped); on an AMD EPYC without AMX the
    same scenario survives (its 11.5 KB stack is likely freed into memory that stays mapped), so
    the machine-independent fact tested here is the swap itself.
    """
    code = SWAP_PROBE.format(root=str(ROOT), imports=imports, compile=compile_expr)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(kept), out.stdout


def test_kept_sigaltstack_puts_the_previous_stack_back() -> None:
    before = current_sigaltstack()
    assert before is not None  # Linux CI
    buf = ctypes.create_string_buffer(1 << 16)
    other = StackT(ctypes.cast(buf, ctypes.c_void_p), 0, len(buf))
    try:
        with kept_sigaltstack():
            assert _libc().sigaltstack(ctypes.byref(other), None) == 0
            assert current_sigaltstack().ss_sp == other.ss_sp
        after = current_sigaltstack()
        assert (after.ss_sp, after.ss_size, after.ss_flags) == (before.ss_sp, before.ss_size, before.ss_flags)
    finally:
        _libc().sigaltstack(ctypes.byref(before), None)
