"""utils/benchmark/peak.py: measured GEMM peaks are positive, checked and labelled."""
from __future__ import annotations

import pytest

from utils import cpu
from utils.benchmark import peak

N = 192


def test_fp32_gemm() -> None:
    r = peak.gemm_float("fp32", n=N, threads=1, reps=2, warmup=1)
    assert r.status == "ok" and r.backend == "torch.mm" and r.threads == 1 and r.n == N
    assert r.gflops_best >= r.gflops_median > 0 and len(r.times_ms) == 2


def test_bf16_only_with_native_bf16(monkeypatch) -> None:
    if cpu.cpu_info().bf16:
        r = peak.gemm_float("bf16", n=N, threads=1, reps=2, warmup=1)
        assert r.status == "ok" and r.gflops_best > 0
    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo(name="no bf16", flags=frozenset({"avx2"})))
    monkeypatch.setattr(peak, "cpu_info", cpu.cpu_info)
    r = peak.gemm_float("bf16", n=N, threads=1)
    assert r.status.startswith("skipped") and "avx512_bf16" in r.status and r.gflops_best is None


NO_VNNI = cpu.CpuInfo(name="AVX2-only CPU", vendor="AuthenticAMD", flags=frozenset("sse2 avx avx2 fma".split()))


@pytest.mark.parametrize("backend", peak.INT8_BACKENDS)
def test_int8_gemm_backends(backend: str) -> None:
    r = peak.gemm_int8(backend, n=N, threads=1, reps=2, warmup=1)
    assert not r.status.startswith("wrong"), r.status  # a wrong product is never a peak
    if r.status != "ok":  # a backend may be missing here; it must say so
        assert r.status.startswith("unavailable") and r.gflops_best is None
        if backend in ("torch._int_mm", "onnxruntime"):
            pytest.fail(f"{backend} should be available: {r.status}")
        return
    assert r.gflops_best > 0 and "8" in r.computes
    if backend == "torch._int_mm":  # s8 x s8 does not go through vpmaddubsw: full range on every CPU
        assert r.computes.startswith("s8 x s8") and "7-bit" not in r.computes
    else:
        bits = peak.int8_weight_bits()  # u8 x s8: 7-bit weights exactly where the CPU lacks VNNI
        assert f"s{bits}" in r.computes and ("7-bit" in r.computes) == (bits == 7)
    with pytest.raises(ValueError, match="int8 backend"):
        peak.gemm_int8("numpy", n=N)


@pytest.mark.parametrize("flags, bits", [(NO_VNNI.flags, 7), (NO_VNNI.flags | {"avx512_vnni"}, 8),
                                         (NO_VNNI.flags | {"avx_vnni"}, 8), (NO_VNNI.flags | {"amx_int8"}, 8)])
def test_weight_bits_follow_vnni(monkeypatch, flags, bits: int) -> None:
    monkeypatch.setattr(peak, "cpu_info", lambda: cpu.CpuInfo(name="fake", flags=frozenset(flags)))
    assert peak.int8_weight_bits() == bits
    a, b = peak._int8_operands(64, 0, unsigned_a=True, weight_bits=bits)
    assert a.max() > 250 and -2 ** (bits - 1) == b.min() and b.max() == 2 ** (bits - 1) - 1


def test_without_vnni_the_safe_operands_are_measured_and_labelled(monkeypatch) -> None:
    """The no-VNNI path runs (and is exact) on any CPU: 7-bit weights cannot saturate."""
    monkeypatch.setattr(peak, "cpu_info", lambda: NO_VNNI)
    r = peak.gemm_int8("onnxruntime", n=N, threads=1, reps=1, warmup=0)
    assert r.status == "ok" and r.computes.startswith("u8 x s7 -> s32") and "saturates" in r.computes


def test_a_wrong_product_is_reported_not_timed(monkeypatch) -> None:
    exact = peak._exact
    monkeypatch.setattr(peak, "_exact", lambda a, b, k: exact(a, b, k) + 1)  # every backend now looks wrong
    for backend in ("torch._int_mm", "onnxruntime"):
        r = peak.gemm_int8(backend, n=N, threads=1, reps=1, warmup=0)
        assert r.status.startswith("wrong product:") and "max error 1" in r.status, r.status
        assert r.gflops_best is None and r.times_ms == []
    res = peak.measured_peaks(threads=1, n=N, reps=1, warmup=0, int8_backends=("onnxruntime",))
    assert res["int8"]["measured"] is None and res["int8"]["backend"] is None


def test_measured_peaks_summary() -> None:
    res = peak.measured_peaks(threads=1, n=N, reps=2, warmup=1, int8_backends=("torch._int_mm", "onnxruntime"))
    assert res["threads"] == 1 and res["fp32"]["measured"] > 0 and res["fp32"]["backend"] == "torch.mm"
    assert res["int8"]["measured"] == max(r["gflops_best"] for r in res["int8"]["results"] if r["status"] == "ok")
    theory = res["fp32"]["theoretical"]
    assert theory["cores"] == 1 and (theory["gflops"] is None or res["fp32"]["fraction_of_theoretical"] > 0)
    assert peak.fraction(50.0, 200.0) == 0.25 and peak.fraction(None, 1.0) is None
