"""INT8 files and CPUs whose u8 x s8 products saturate (no VNNI).

Without VNNI, x86 INT8 kernels add pairs of u8 x s8 products in int16 (``vpmaddubsw``), which
clamps with full-range operands (:func:`utils.cpu.int8_saturates`). An INT8 export records in
its metadata whether its weights were quantized to 7 bits, which rules that out
(:func:`saturation_record`); a backend loading a file without that guarantee on such a CPU
warns once (:func:`warn_if_unsafe`).
"""
from __future__ import annotations

import logging

from utils.cpu import cpu_flags, int8_saturates

LOGGER = logging.getLogger(__name__)
_warned: set[str] = set()


def saturation_record(saturation_safe: bool) -> dict:
    """What an INT8 file stores about its weight range."""
    return {"saturation_safe": bool(saturation_safe), "weight_bits": 7 if saturation_safe else 8}


def warn_if_unsafe(record: dict | None, name: str, flags=None) -> bool:
    """Warn once per file name, in one line, when an INT8 file made with full-range weights runs
    on a CPU whose u8 x s8 products saturate. ``record``: the file's quantization metadata (None
    for a float file). Returns whether it warned."""
    if not record or record.get("saturation_safe") or name in _warned:
        return False
    if not int8_saturates(cpu_flags() if flags is None else flags):
        return False
    _warned.add(name)
    LOGGER.warning("%s: INT8 with full-range weights on a CPU without VNNI: u8 x s8 products can saturate "
                   "and cost accuracy; re-export with export.py --int8 (7-bit weights by default)", name)
    return True
