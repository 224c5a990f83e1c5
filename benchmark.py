"""Benchmark: route latencies, routing overhead, mixed batches, ONNX Runtime and router training.

    python benchmark.py                                              # dy-yolov7 at 640 px
    python benchmark.py --cfg dy-yolov7 dy-yolov7x --img-size 640 --reps 7 --warmup 2
    python benchmark.py --cfg dy-yolov7-tiny --img-size 320 --skip onnx,router --threads 2
    python benchmark.py --cfg dy-yolov7-w6 --img-size 1280 --device 0

Writes ``benchmark.json`` (every timing, summaries, ratios, goals) and ``benchmark.md`` (the
tables) to ``--out``. Sections (``--skip`` any): fused, fast, mixed, onnx, router.
"""
from __future__ import annotations

import argparse
import sys

from utils.benchmark.runner import SECTIONS, run_benchmark
from utils.torch_utils import merge_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=["dy-yolov7"], help="configs (a dynamic one is compared with its base)")
    p.add_argument("--img-size", nargs="+", type=int, default=[640], help="square input sizes")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    p.add_argument("--batch", type=int, default=16, help="mixed-batch size (half of it hard)")
    p.add_argument("--router-batch", type=int, default=16, help="router-training batch compared with batch 1")
    p.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: library default)")
    p.add_argument("--device", default="", help="cpu or a CUDA index (default: CUDA 0 if available)")
    p.add_argument("--out", default="runs/benchmark", help="folder for benchmark.json and benchmark.md")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    return p.parse_args(argv)


def run(**kwargs) -> dict:
    """Run the benchmark with benchmark.py's options as keyword arguments; returns the result dict."""
    opt = merge_options(parse_args, kwargs, "benchmark")
    for key in ("cfg", "img_size"):
        value = getattr(opt, key)
        setattr(opt, key, [value] if isinstance(value, (str, int)) else list(value))
    return run_benchmark(opt)


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    try:
        result = run(**vars(opt))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(open(result["files"]["markdown"], encoding="utf-8").read())
    print(f"Results saved to {result['files']['json']} and {result['files']['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
