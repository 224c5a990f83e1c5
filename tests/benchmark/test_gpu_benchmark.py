"""scripts/gpu_benchmark.py: the GPU check's benchmark, run here on the CPU in fp32 at a tiny size
(on a GPU it runs in fp16 through scripts/gpu_check.sh)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script


def test_paper_ratios_follow_from_the_v100_fps() -> None:
    ratios = load_script("gpu_benchmark").paper_ratios()
    assert ratios["hard_vs_plain"] == pytest.approx(114 / 83)  # Dy-YOLOv7 / 100 vs YOLOv7
    assert ratios["easy_vs_plain"] == pytest.approx(1.0, abs=0.01)  # from / 10 and / 100: no routing overhead


def test_routes_plain_and_mixed_batch_measured(tmp_path: Path) -> None:
    script = load_script("gpu_benchmark")
    res = script.run(cfg="dy-yolov7-tiny", img_size=64, batch=[1, 4], reps=2, warmup=0, device="cpu", half=False,
                     out=str(tmp_path))
    assert [r["batch"] for r in res["routes"]] == [1, 4]
    for r in res["routes"]:
        assert {"easy", "hard", "plain"} <= set(r["latency"]) and r["latency"]["hard"]["n"] == 2
        assert r["metrics"]["routing_overhead"] > 0 and r["metrics"]["hard_vs_plain"] > 0
    assert res["mixed"]["batch"] == 4 and res["mixed"]["n_hard"] == 2 and res["mixed"]["metrics"]["efficiency"] > 0
    assert res["gflops"]["easy"] < res["gflops"]["hard"] and res["meta"]["dtype"] == "fp32"
    md = (tmp_path / "gpu_benchmark.md").read_text()
    assert "| 4 |" in md and "1.37" in md and (tmp_path / "gpu_benchmark.json").is_file()


def test_fp16_needs_cuda(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16 needs a CUDA device; pass --fp32"):
        load_script("gpu_benchmark").run(cfg="dy-yolov7-tiny", device="cpu", out=str(tmp_path))
    with pytest.raises(ValueError, match="not a dynamic config"):
        load_script("gpu_benchmark").run(cfg="yolov7-tiny", device="cpu", half=False, out=str(tmp_path))
