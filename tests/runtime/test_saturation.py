"""utils/runtime/saturation.py: an INT8 file with full-range weights warns once, in one line, on a
CPU without VNNI, and never where the products cannot saturate."""
from __future__ import annotations

import logging

import pytest

from utils.runtime import saturation

AVX2 = frozenset("sse2 avx avx2 fma".split())
VNNI = AVX2 | {"avx512f", "avx512_vnni"}


@pytest.fixture(autouse=True)
def _fresh(monkeypatch) -> None:
    monkeypatch.setattr(saturation, "_warned", set())


def test_full_range_file_on_a_cpu_without_vnni_warns_once(caplog) -> None:
    record = saturation.saturation_record(False)
    assert record == {"saturation_safe": False, "weight_bits": 8}
    with caplog.at_level(logging.WARNING, logger=saturation.LOGGER.name):
        assert saturation.warn_if_unsafe(record, "m-int8.onnx", AVX2)
        assert not saturation.warn_if_unsafe(record, "m-int8.onnx", AVX2)  # once per file
        assert saturation.warn_if_unsafe(record, "other-int8.onnx", AVX2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in m and "VNNI" in m and "export.py --int8" in m for m in lines)
    assert lines[0].startswith("m-int8.onnx: ")


@pytest.mark.parametrize("record, flags", [
    (saturation.saturation_record(True), AVX2),   # 7-bit weights: exact everywhere
    (saturation.saturation_record(False), VNNI),  # vpdpbusd accumulates in int32
    (None, AVX2),                                 # not an INT8 file
])
def test_no_warning_where_nothing_saturates(caplog, record, flags) -> None:
    with caplog.at_level(logging.WARNING, logger=saturation.LOGGER.name):
        assert not saturation.warn_if_unsafe(record, "m.onnx", flags)
    assert not caplog.records


def test_files_from_before_the_record_count_as_full_range() -> None:
    older = {"tool": "onnxruntime.quantization.quantize_static", "weights": "s8 symmetric per channel"}
    assert saturation.warn_if_unsafe(older, "old-int8.onnx", AVX2)
