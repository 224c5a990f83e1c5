"""benchmark.py's options: what to measure and how often (the benchmark runner reads these)."""
from __future__ import annotations

from dataclasses import dataclass

from utils.defaults import PROJECT
from utils.options import option
from utils import option_groups as groups

SECTIONS = ("fused", "fast", "mixed", "onnx", "router", "peak", "deploy")


@dataclass
class BenchmarkOptions:
    """benchmark.py's options (flags: ``--img-size`` for ``img_size`` ...)."""

    cfg: list[str] = option(["dy-yolov7"], "configs (a dynamic one is compared with its base)")
    img_size: list[int] = option([640], "square input sizes")
    reps: int = option(5, "timed repetitions per measurement")
    warmup: int = option(2, "untimed repetitions first")
    batch: int = option(16, "mixed-batch size (half of it hard)")
    router_batch: int = option(16, "router-training batch compared with batch 1")
    deploy_batch: list[int] = option([1, 16], "deploy section: batch sizes per backend (the largest also mixed)")
    calib_images: int = option(8, "deploy section: INT8 calibration images (random, both routes)")
    peak_n: int = option(2048, "peak section: size of the square GEMMs (timed --reps times)")
    threads: int = option(0, "torch and ONNX Runtime threads (0: library default)")
    device: str = groups.device()
    out: str = option(PROJECT["benchmark"], "folder for benchmark.json and benchmark.md")
    skip: str = option("", f"comma-separated sections to skip: {','.join(SECTIONS)}")

    def __post_init__(self) -> None:
        self.cfg = [self.cfg] if isinstance(self.cfg, str) else list(self.cfg)
        self.img_size = [self.img_size] if isinstance(self.img_size, int) else list(self.img_size)
        self.deploy_batch = [self.deploy_batch] if isinstance(self.deploy_batch, int) else list(self.deploy_batch)
