"""INT8 on a CPU without AVX-512 and VNNI, whatever CPU runs the suite: QEMU's user-mode emulator
runs Python as an Intel Haswell (AVX2 and FMA only), so ONNX Runtime and OpenVINO pick their
AVX2 u8 x s8 kernels (``vpmaddubsw``) exactly as on such a machine. On a host that is itself
AVX2-only (no AVX-512, no VNNI) the same code runs natively instead, without the emulator.

On the emulated CPU this checks the cause (a full-range u8 x s8 product saturates, 7-bit weights
do not), that the peak measurement still measures a correct product there, and that the
saturation-safe INT8 exports compute there what they compute on the host. QEMU comes from
Debian's ``qemu-user`` package (``.ci/run`` installs it); without it these tests are skipped
with that reason.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

QEMU = shutil.which("qemu-x86_64")
CPU = "Haswell-v4"  # AVX2, FMA; no AVX-512, no VNNI


def _host_is_avx2_only() -> bool:
    from numpy._core._multiarray_umath import __cpu_features__ as f
    return bool(f.get("AVX2") and f.get("FMA3") and not f.get("AVX512F") and not f.get("AVX512VNNI")
                and not f.get("AVXVNNI"))


NATIVE = platform.machine() == "x86_64" and _host_is_avx2_only()  # the host is the CPU to test

pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU: needs an x86_64 host"),
    pytest.mark.skipif(QEMU is None and not NATIVE, reason="needs qemu-x86_64 (apt-get install qemu-user) to "
                                                           "emulate an AVX2-only CPU"),
]

# Runs first in every emulated process: the CPU must really be an AVX2-only one, and utils.cpu
# (which reads the host's /proc/cpuinfo, passed through by QEMU) must see the emulated flags.
PRELUDE = """
import json, sys
from numpy._core._multiarray_umath import __cpu_features__ as f
assert f["AVX2"] and f["FMA3"] and not f["AVX512F"] and not f["AVX512VNNI"], "not an AVX2-only CPU"
from utils import cpu
HASWELL = cpu.CpuInfo(name="QEMU Haswell", vendor="GenuineIntel", flags=frozenset("sse2 avx avx2 fma".split()))
cpu.cpu_info = lambda: HASWELL
"""


def emulated(code: str, timeout: int = 300) -> dict:
    """Run ``code`` (after PRELUDE) in Python on the emulated CPU (or natively on an AVX2-only host);
    it prints one JSON line last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path]), "OMP_NUM_THREADS": "1"}
    runner = [] if NATIVE else [QEMU, "-cpu", CPU]
    proc = subprocess.run([*runner, sys.executable, "-c", PRELUDE + code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory) -> dict:
    """A tiny single-route export quantized by ONNX Runtime with 7-bit and with 8-bit weights, and
    their outputs on the host for probe images."""
    import export
    from tests.export.test_openvino import SIZE, tiny_checkpoint
    from utils.export import openvino as ovx
    from utils.export import quantize as q
    from utils.runtime.onnx_model import OnnxModel

    root = tmp_path_factory.mktemp("emulated")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt = tiny_checkpoint(root / "dy.pt")
        easy = Path(export.run(weights=str(ckpt), img_size=SIZE, route="easy", dynamic_batch=True,
                                output=str(root / "easy"))["onnx"])
        calib = ovx.probe_inputs((SIZE, SIZE), 12, seed=1)
        files = {"safe": q.quantize_onnx(easy, calib, root / "safe.onnx"),
                 "full": q.quantize_onnx(easy, calib, root / "full.onnx", saturation_safe=False)}
        x = ovx.probe_inputs((SIZE, SIZE), 8, seed=2).numpy()
        np.save(root / "x.npy", x)
        host = {k: OnnxModel(p, threads=1).run({"images": x})[0] for k, p in files.items()}
    finally:
        torch.set_num_threads(n)
    return {"root": root, "files": files, "host": host}


@pytest.fixture(scope="module")
def on_haswell(int8_pair: dict) -> dict:
    """One emulated process (starting Python and torch there takes most of the time): the int8
    GEMMs of the peak measurement with 8-bit and default weights, and the two INT8 files run on
    the host's probe images (saved beside them as ``<name>-emulated.npy``)."""
    root = int8_pair["root"]
    return emulated(f"""
import numpy as np, onnxruntime as ort
from utils.benchmark import peak
out = {{}}
for backend in ("onnxruntime", "openvino"):
    fn = {{"onnxruntime": peak.gemm_int8_onnxruntime, "openvino": peak.gemm_int8_openvino}}[backend]
    try:
        fn(64, 1, 1, 0, weight_bits=8)
        full = "exact"
    except peak.WrongProduct as e:
        full = str(e)
    except ImportError:
        continue
    r = peak.gemm_int8(backend, n=64, threads=1, reps=1, warmup=0)
    out[backend] = {{"full": full, "status": r.status, "computes": r.computes}}
r = peak.gemm_int8("torch._int_mm", n=64, threads=1, reps=1, warmup=0)
out["torch._int_mm"] = {{"status": r.status, "computes": r.computes}}
o = ort.SessionOptions(); o.intra_op_num_threads = 1
x = np.load({str(root / 'x.npy')!r})
for k in ("safe", "full"):
    s = ort.InferenceSession({str(root)!r} + "/" + k + ".onnx", o, providers=["CPUExecutionProvider"])
    np.save({str(root)!r} + "/" + k + "-emulated.npy", s.run(None, {{"images": x}})[0])
print(json.dumps(out))
""")


def test_without_vnni_full_range_saturates_and_the_peak_measures_7_bit_weights(on_haswell: dict) -> None:
    res = on_haswell
    assert "onnxruntime" in res, res
    for backend in ("onnxruntime", "openvino"):
        if backend not in res:
            continue
        assert res[backend]["full"].startswith(f"{'onnxruntime MatMulInteger' if backend == 'onnxruntime' else 'OpenVINO'}") \
            and "wrong product" in res[backend]["full"], res[backend]  # the cause, on this CPU
        assert res[backend]["status"] == "ok" and "u8 x s7" in res[backend]["computes"], res[backend]
    assert res["torch._int_mm"]["status"] == "ok"  # oneDNN's s8 x s8 GEMM is exact without VNNI


def test_saturation_safe_int8_computes_the_same_without_vnni(int8_pair: dict, on_haswell: dict) -> None:
    root = int8_pair["root"]
    diff = {}
    for k in ("safe", "full"):
        got, want = np.load(root / f"{k}-emulated.npy"), int8_pair["host"][k]
        diff[k] = float(np.abs(got[..., 4:] - want[..., 4:]).max())  # objectness and class scores
    # 7-bit weights: the AVX2 kernels compute what VNNI (or AVX-512) computes on the host,
    # up to the float rounding of requantization.
    assert diff["safe"] < 1e-3, diff
    print(f"max score difference emulated AVX2 vs host: {diff}")
