"""Tests for utils/io.py: atomic writes (no partial file, the user's permissions) and CSV logs."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
import pytest

from utils.io import append_csv, atomic_write, atomic_write_text, file_mode, read_csv, truncate_csv


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"

    def fail(p: Path) -> None:
        raise onnx.checker.ValidationError("broken")

    with pytest.raises(onnx.checker.ValidationError):
        atomic_write(target, lambda p: p.write_bytes(b"half"), fail)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a.txt", "old")

    def half_then_crash(p: Path) -> None:
        p.write_text("new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_permissions(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "data")
        expected = 0o666 & ~umask
        assert file_mode() == expected
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == expected


def test_csv_log_appends_and_truncates(tmp_path: Path) -> None:
    log = tmp_path / "results.csv"
    for epoch in range(4):
        append_csv(log, {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    assert [r["epoch"] for r in read_csv(log)] == ["0", "1", "2", "3"]
    truncate_csv(log, 2)
    rows = read_csv(log)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["loss"]) == pytest.approx(0.5)
    truncate_csv(log, 5)  # nothing to drop
    assert len(read_csv(log)) == 2
    assert read_csv(tmp_path / "missing.csv") == []


def test_append_csv_refuses_a_row_that_does_not_fit_the_header(tmp_path: Path) -> None:
    log = tmp_path / "results.csv"
    append_csv(log, {"epoch": 0, "loss": 0.5})
    with pytest.raises(ValueError, match=r"columns \['epoch', 'loss', 'map'\] does not fit the header \['epoch', 'loss'\]"):
        append_csv(log, {"epoch": 1, "loss": 0.4, "map": 0.1})
    append_csv(log, {"epoch": 1, "loss": 0.4})
    assert [r["epoch"] for r in read_csv(log)] == ["0", "1"]

