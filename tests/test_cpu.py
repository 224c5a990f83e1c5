"""utils/cpu.py: flags, bf16 / VNNI support, the theoretical peak formula."""
from __future__ import annotations

import pytest

from utils import cpu

ZEN4 = cpu.CpuInfo(name="AMD EPYC", vendor="AuthenticAMD", family=25, model=17, cores=2, threads=2, clock_ghz=2.6,
                   flags=frozenset("sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni".split()))
SKYLAKE = cpu.CpuInfo(name="Intel Xeon Gold", vendor="GenuineIntel", family=6, model=85, cores=4, clock_ghz=2.0,
                      flags=frozenset("sse2 avx avx2 fma avx512f avx512bw".split()))
HASWELL = cpu.CpuInfo(name="Intel Core i7", vendor="GenuineIntel", family=6, model=60, cores=4, clock_ghz=3.0,
                      flags=frozenset("sse2 avx avx2 fma".split()))

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
cpu MHz\t\t: 2596.096
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16
"""


def test_theoretical_peak_is_cores_x_fma_x_lanes_x_2_x_clock() -> None:
    # Zen 4: AVX-512 runs on two 256-bit FMA pipes -> 8 fp32 lanes per pipe
    fp32 = cpu.theoretical_peak("fp32", ZEN4)
    assert (fp32["cores"], fp32["fma_units"], fp32["lanes"], fp32["clock_ghz"]) == (2, 2, 8, 2.6)
    assert fp32["gflops"] == pytest.approx(2 * 2 * 8 * 2 * 2.6)
    assert cpu.theoretical_peak("bf16", ZEN4)["gflops"] == pytest.approx(2 * fp32["gflops"])  # vdpbf16ps
    assert cpu.theoretical_peak("int8", ZEN4)["gflops"] == pytest.approx(4 * fp32["gflops"])  # vpdpbusd
    assert cpu.theoretical_peak("fp32", SKYLAKE)["gflops"] == pytest.approx(4 * 2 * 16 * 2 * 2.0)
    assert cpu.theoretical_peak("fp32", HASWELL)["gflops"] == pytest.approx(4 * 2 * 8 * 2 * 3.0)
    for info in (SKYLAKE, HASWELL):  # no native bf16 / int8 dot products: no peak claimed
        assert cpu.theoretical_peak("bf16", info)["gflops"] is None
        assert cpu.theoretical_peak("int8", info)["gflops"] is None
    over = cpu.theoretical_peak("fp32", HASWELL, cores=1, clock_ghz=4.0, fma_units=1)
    assert over["gflops"] == pytest.approx(1 * 1 * 8 * 2 * 4.0) and "1 cores" in over["formula"]
    with pytest.raises(ValueError, match="dtype"):
        cpu.theoretical_peak("fp64", ZEN4)


def test_feature_checks() -> None:
    assert ZEN4.bf16 and ZEN4.vnni and ZEN4.simd_bits == 512
    assert not SKYLAKE.bf16 and not SKYLAKE.vnni and HASWELL.simd_bits == 256
    assert cpu.supports_vnni({"avx_vnni"}) and cpu.supports_bf16({"amx_bf16"})
    cpu.require_bf16(ZEN4)
    with pytest.raises(ValueError, match=r"OpenVINO bf16 needs a CPU with AVX512_BF16 or AMX-BF16; "
                                         r"this CPU \(Intel Xeon Gold\).*'avx512_bf16'"):
        cpu.require_bf16(SKYLAKE, what="OpenVINO bf16")


def test_parse_cpuinfo() -> None:
    entry = cpu._parse_cpuinfo(CPUINFO)
    assert entry["_cores"] == 2 and entry["model name"] == "AMD EPYC" and "avx512_bf16" in entry["flags"]
    assert cpu._clock_ghz(entry, {}) == pytest.approx(2.596)
    assert cpu._clock_ghz({}, {"CPU max MHz": "3700.0000"}) == pytest.approx(3.7)


def test_this_machine() -> None:
    info = cpu.cpu_info()
    assert info.cores >= 1 and info.threads >= info.cores and info.name
    d = info.as_dict()
    assert d["simd_bits"] in (0, 128, 256, 512) and isinstance(d["flags"], list)
    peak = cpu.theoretical_peak("fp32", info)
    assert peak["gflops"] is None or peak["gflops"] > 0


def _fake_machine(monkeypatch, cpuinfo: str, lscpu: dict | None = None, allowed: int = 2) -> cpu.CpuInfo:
    """cpu_info() of a machine whose /proc/cpuinfo (and lscpu) say this."""
    monkeypatch.setattr(cpu, "_read_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(cpu, "_lscpu", lambda: dict(lscpu or {}))
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: set(range(allowed)), raising=False)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: allowed)
    cpu.cpu_info.cache_clear()
    try:
        return cpu.cpu_info()
    finally:
        cpu.cpu_info.cache_clear()  # the real machine again for the other tests


def _cpuinfo(vendor: str, family: int, model: int, name: str, flags: str, n: int = 2) -> str:
    return "\n\n".join(f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
                       f"model name\t: {name}\ncpu MHz\t\t: 2450.000\nphysical id\t: 0\ncore id\t\t: {i}\n"
                       f"flags\t\t: {flags}" for i in range(n)) + "\n"


BASE_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2"


def test_detection_on_an_avx2_only_epyc(monkeypatch) -> None:
    info = _fake_machine(monkeypatch, _cpuinfo("AuthenticAMD", 23, 49, "AMD EPYC 7B12", BASE_FLAGS))
    assert (info.name, info.vendor, info.family, info.model, info.cores, info.threads) == \
        ("AMD EPYC 7B12", "AuthenticAMD", 23, 49, 2, 2)
    assert info.simd_bits == 256 and not info.bf16 and not info.vnni and cpu.int8_saturates(info.flags)
    assert cpu.fma_layout(info)[:2] == (2, 256)  # Zen 2
    assert cpu.theoretical_peak("int8", info)["gflops"] is None
    with pytest.raises(ValueError, match="AMD EPYC 7B12"):
        cpu.require_bf16(info)


def test_detection_on_avx512_epycs_and_an_amx_xeon(monkeypatch) -> None:
    zen4 = _fake_machine(monkeypatch, _cpuinfo("AuthenticAMD", 25, 17, "AMD EPYC 9B14",
                                                BASE_FLAGS + " avx512f avx512bw avx512_vnni avx512_bf16"))
    assert zen4.simd_bits == 512 and zen4.vnni and zen4.bf16 and not cpu.int8_saturates(zen4.flags)
    assert cpu.fma_layout(zen4)[:2] == (2, 256)  # AVX-512 on 256-bit pipes
    xeon = _fake_machine(monkeypatch, _cpuinfo("GenuineIntel", 6, 143, "Intel Xeon Platinum 8481C",
                                                BASE_FLAGS + " avx512f avx512bw amx_tile amx_int8 amx_bf16", n=4),
                         allowed=4)
    assert xeon.vnni and xeon.bf16 and xeon.cores == 4 and cpu.fma_layout(xeon)[:2] == (2, 512)
    skylake = _fake_machine(monkeypatch, _cpuinfo("GenuineIntel", 6, 85, "Intel Xeon Gold 6148",
                                                   BASE_FLAGS + " avx512f avx512bw"))
    assert skylake.simd_bits == 512 and not skylake.vnni and cpu.int8_saturates(skylake.flags)


def test_detection_without_proc_cpuinfo_falls_back_to_lscpu(monkeypatch) -> None:
    info = _fake_machine(monkeypatch, "", {"Model name": "Some CPU", "Vendor ID": "GenuineIntel", "CPU family": "6",
                                           "Flags": "sse2 avx avx2 fma", "CPU max MHz": "3000.0000"}, allowed=1)
    assert info.name == "Some CPU" and info.family == 6 and info.simd_bits == 256 and info.clock_ghz == 3.0
    assert info.cores == 1 and info.threads == 1
