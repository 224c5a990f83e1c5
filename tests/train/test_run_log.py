"""utils/train/loop.py: the run's console table (header once, short names, NaN as '-') and results.csv."""
from __future__ import annotations

import logging
import math
from pathlib import Path

from utils.io import read_csv
from utils.train.loop import RunLog, column_name, on_console


def test_column_names() -> None:
    assert [column_name(k) for k in ("train/box", "val/total", "metrics/precision", "metrics/map50",
                                     "metrics/detector2_map50", "metrics/detector1_map", "lr")] == \
        ["box", "val total", "P", "mAP50", "d2 mAP50", "d1 mAP", "lr"]
    assert not on_console("epoch") and not on_console("train/box1") and not on_console("val/cls2")
    assert on_console("train/total1") and on_console("val/box") and on_console("metrics/detector1_map")


def test_rows_print_as_a_table_with_the_header_once(tmp_path: Path, caplog) -> None:
    log = RunLog(tmp_path, tensorboard=False)
    with caplog.at_level(logging.INFO, logger="dydet.train"):
        for epoch in range(3):
            log.write({"epoch": epoch, "train/total": 0.5 / (epoch + 1), "train/box1": 0.1,
                       "val/total": math.nan if epoch < 2 else 0.4, "metrics/map": 0.01 * epoch}, epochs=3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[0].split() == ["epoch", "total", "val", "total", "mAP"]
    assert lines[1].split() == ["1/3", "0.5", "-", "0"] and lines[3].split() == ["3/3", "0.1667", "0.4", "0.02"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    rows = read_csv(tmp_path / "results.csv")
    assert len(rows) == 3 and "train/box1" in rows[0]  # the CSV keeps every column


def test_long_column_names_widen_their_column(tmp_path: Path, caplog) -> None:
    log = RunLog(tmp_path, tensorboard=False, title="router epoch")
    with caplog.at_level(logging.INFO, logger="dydet.train"):
        log.write({"epoch": 0, "val/router_loss": 0.123, "lr": 1e-4}, epochs=2)
        log.write({"epoch": 1, "val/router_loss": 0.1, "lr": 1e-4}, epochs=2)
    header, *rows = [r.getMessage() for r in caplog.records]
    assert "router epoch" in header and " val router_loss " in header + " "
    assert all(len(row) == len(header) for row in rows) and rows[0].split() == ["1/2", "0.123", "0.0001"]
