"""What this CPU can do: instruction-set flags, bf16 / VNNI support and theoretical peaks.

The theoretical peak of a data type is

    cores x FMA units x SIMD lanes x 2 x clock

(2 = multiply and add of one fused multiply-add). ``SIMD lanes`` are the elements of that type
one FMA-class instruction processes per unit and cycle: the datapath width (bits) / 32 for
fp32; for bf16 with AVX512_BF16 (``vdpbf16ps``: two bf16 products per fp32 lane) width / 16;
for int8 with VNNI (``vpdpbusd``: four u8 x s8 products per int32 lane) width / 8. Without
those instructions bf16 and int8 have no faster path than fp32, so their peak is not given.

``datapath_bits`` is what one unit computes per cycle, not the ISA width: AMD Zen 4 executes
AVX-512 on two 256-bit pipes (one 512-bit instruction is split in two halves), Zen 1 AVX2 on
128-bit pipes. :func:`fma_layout` knows the families that matter here and says when it
guesses; every number can be overridden. The clock is what the OS reports (under a hypervisor
usually the nominal TSC frequency, not the boost clock), so a measured peak may exceed it.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
DTYPES = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo (or lscpu) describes it."""

    name: str
    vendor: str = ""
    family: int | None = None
    model: int | None = None
    cores: int = 1  # physical cores available to this process
    threads: int = 1  # logical CPUs available to this process
    clock_ghz: float | None = None
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def simd_bits(self) -> int:
        """Widest vector ISA: 512 (AVX-512F), 256 (AVX2/AVX), 128 (SSE2) or 0."""
        return simd_bits(self.flags)

    @property
    def bf16(self) -> bool:
        return supports_bf16(self.flags)

    @property
    def vnni(self) -> bool:
        return supports_vnni(self.flags)

    def as_dict(self) -> dict:
        return {"name": self.name, "vendor": self.vendor, "family": self.family, "model": self.model,
                "cores": self.cores, "threads": self.threads, "clock_ghz": self.clock_ghz,
                "simd_bits": self.simd_bits, "bf16": self.bf16, "vnni": self.vnni,
                "flags": sorted(self.flags)}


# ---- flags ----------------------------------------------------------------------------------------
def simd_bits(flags) -> int:
    flags = set(flags)
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    return 128 if "sse2" in flags else 0


def supports_bf16(flags) -> bool:
    """Native bf16 dot products (AVX512_BF16 or AMX-BF16): what OpenVINO's bf16 mode runs on."""
    return any(f in set(flags) for f in BF16_FLAGS)


def supports_vnni(flags) -> bool:
    """Native u8 x s8 dot products (AVX512_VNNI, AVX-VNNI or AMX-INT8)."""
    return any(f in set(flags) for f in VNNI_FLAGS)


def int8_saturates(flags) -> bool:
    """Whether full-range u8 x s8 products can saturate on this CPU.

    Without VNNI, x86 INT8 kernels (ONNX Runtime's MLAS, OpenVINO's oneDNN) multiply with
    ``vpmaddubsw``, which adds two u8 x s8 products into an int16: 255 x 127 x 2 = 64770 does
    not fit, so the sum is clamped to 32767. With 7-bit weights (|w| <= 64) the pair sum stays
    below 2^15 and every product is exact; VNNI (``vpdpbusd``) accumulates in int32 directly.
    """
    return not supports_vnni(flags)


def require_bf16(info: CpuInfo | None = None, what: str = "bf16 inference") -> None:
    """Raise ValueError naming the missing CPU feature unless this CPU computes in bf16 natively."""
    info = info or cpu_info()
    if not info.bf16:
        raise ValueError(f"{what} needs a CPU with AVX512_BF16 or AMX-BF16; this CPU ({info.name}) has "
                         f"neither (no 'avx512_bf16' / 'amx_bf16' flag), so run in fp32 or INT8 instead")


# ---- reading the machine --------------------------------------------------------------------------
def _parse_cpuinfo(text: str) -> dict:
    """First processor block of /proc/cpuinfo as a dict, plus the count of physical cores."""
    if not text.strip():
        return {}
    first, cores = {}, set()
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        if not first:
            first = entry
        cores.add((entry.get("physical id", "0"), entry.get("core id", entry.get("processor", "0"))))
    first["_cores"] = len(cores)
    return first


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def _lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def _to_int(value) -> int | None:
    try:
        return int(str(value), 0)
    except (TypeError, ValueError):
        return None


def _clock_ghz(entry: dict, lscpu: dict) -> float | None:
    """Maximum clock if the OS reports one, else the current 'cpu MHz' (the TSC rate under KVM)."""
    for value in (lscpu.get("CPU max MHz"), entry.get("cpu MHz"), lscpu.get("CPU MHz")):
        try:
            mhz = float(str(value).replace(",", "."))
        except (TypeError, ValueError):
            continue
        if mhz > 0:
            return round(mhz / 1000, 3)
    m = re.search(r"@\s*([\d.]+)\s*GHz", entry.get("model name", ""))
    return float(m.group(1)) if m else None


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (cached). Cores and threads count only the CPUs this process may use."""
    entry = _parse_cpuinfo(_read_cpuinfo())
    lscpu = _lscpu()
    flags = (entry.get("flags") or lscpu.get("Flags") or "").lower().split()
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    total = os.cpu_count() or allowed
    physical = entry.get("_cores") or total
    threads_per_core = max(1, round(total / physical)) if physical else 1
    return CpuInfo(name=entry.get("model name") or lscpu.get("Model name") or platform.processor() or "unknown",
                   vendor=entry.get("vendor_id") or lscpu.get("Vendor ID", ""),
                   family=_to_int(entry.get("cpu family") or lscpu.get("CPU family")),
                   model=_to_int(entry.get("model") or lscpu.get("Model")),
                   cores=max(1, allowed // threads_per_core), threads=allowed,
                   clock_ghz=_clock_ghz(entry, lscpu), flags=frozenset(flags))


def cpu_flags() -> frozenset[str]:
    return cpu_info().flags


# ---- theoretical peak -----------------------------------------------------------------------------
def fma_layout(info: CpuInfo) -> tuple[int, int, str]:
    """(FMA units per core, datapath bits per unit, how it was decided) for ``info``."""
    bits = info.simd_bits
    if bits == 0:
        return 1, 0, "no SIMD"
    vendor, fam, model = info.vendor, info.family, info.model
    if vendor == "AuthenticAMD" and fam is not None:
        if fam == 0x17:  # Zen 1 / Zen+ (model < 0x30): 128-bit pipes; Zen 2: 256-bit
            return 2, min(bits, 128 if (model or 0) < 0x30 else 256), "AMD Zen/Zen 2: 2 FMA pipes"
        if fam == 0x19:  # Zen 3 and Zen 4: two 256-bit FMA pipes (Zen 4 splits AVX-512 in halves)
            return 2, min(bits, 256), "AMD Zen 3/4: 2 x 256-bit FMA pipes"
        if fam >= 0x1A:  # Zen 5: full-width 512-bit FMA pipes on server and desktop parts
            return 2, bits, "AMD Zen 5: 2 FMA pipes at the ISA width"
    if vendor == "GenuineIntel" and bits == 512:
        return 2, 512, "Intel AVX-512 server core, assumed 2 FMA units (some parts have 1)"
    return 2, bits, "assumed 2 FMA units at the ISA width"


def lanes(dtype: str, datapath_bits: int, flags) -> int | None:
    """Elements of ``dtype`` one FMA-class instruction handles per unit and cycle (None: no native path)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if dtype == "fp32":
        return datapath_bits // 32
    if dtype == "bf16":
        return datapath_bits // 16 if "avx512_bf16" in set(flags) else None
    return datapath_bits // 8 if supports_vnni(flags) else None


def theoretical_peak(dtype: str = "fp32", info: CpuInfo | None = None, cores: int | None = None,
                     clock_ghz: float | None = None, fma_units: int | None = None,
                     datapath_bits: int | None = None) -> dict:
    """GFLOP/s (GOP/s for int8) = cores x FMA units x lanes x 2 x clock, with every factor.

    ``cores`` defaults to the cores of ``info`` (pass the thread count used, e.g. 2), the rest
    to :func:`fma_layout` and the reported clock. ``gflops`` is None when the type has no native
    dot-product instruction here (AMX tiles are not modelled).
    """
    info = info or cpu_info()
    units, bits, how = fma_layout(info)
    units = fma_units or units
    bits = datapath_bits or bits
    cores = cores or info.cores
    clock = clock_ghz or info.clock_ghz
    n = lanes(dtype, bits, info.flags)
    peak = None if n is None or clock is None else cores * units * n * 2 * clock
    return {"dtype": dtype, "gflops": peak, "cores": cores, "fma_units": units, "lanes": n,
            "datapath_bits": bits, "clock_ghz": clock, "basis": how,
            "formula": f"{cores} cores x {units} FMA units x {n} lanes x 2 x {clock} GHz" if n else
            f"no native {dtype} dot-product instruction on this CPU"}
