"""Benchmark: route latencies, routing overhead, mixed batches, ONNX Runtime and router training.

    python benchmark.py                                              # dy-yolov7 at 640 px
    python benchmark.py --cfg dy-yolov7 dy-yolov7x --img-size 640 --reps 7 --warmup 2
    python benchmark.py --cfg dy-yolov7-tiny --img-size 320 --skip onnx,router --threads 2
    python benchmark.py --cfg dy-yolov7-w6 --img-size 1280 --device 0

Writes ``benchmark.json`` (every timing, summaries, ratios, goals) and ``benchmark.md`` (the
tables) to ``--out``. Sections (``--skip`` any): peak, fused, fast, mixed, onnx, deploy, router.
"""
from __future__ import annotations

import sys
from pathlib import Path

from utils.benchmark.options import BenchmarkOptions as Options
from utils.benchmark.runner import run_benchmark
from utils.cli import script_main
from utils.options import make_options, parse_options


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Run the benchmark with benchmark.py's options (an :class:`Options` or keywords); returns the result dict."""
    return run_benchmark(make_options(Options, options, **kwargs))


def _done(result: dict) -> str:
    files = result["files"]
    return Path(files["markdown"]).read_text(encoding="utf-8") + \
        f"\nResults saved to {files['json']} and {files['markdown']}"


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__, done=_done)


if __name__ == "__main__":
    sys.exit(main())
