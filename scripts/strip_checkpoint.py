"""A release copy of a checkpoint: weights (fp16), config, class names, calibration; no training state.

    python scripts/strip_checkpoint.py --src runs/train_router/exp/weights/best.pt --dst demo-fp16.pt
    python scripts/strip_checkpoint.py --src best.pt --dst release.pt --fp32      # keep fp32 weights

The source is not modified; the copy is written atomically and loads like the source
(``weights_only``, strictly).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from utils.cli import script_main  # noqa: E402
from utils.options import make_options, option, parse_options  # noqa: E402
from utils.weights.checkpoints import strip_checkpoint  # noqa: E402


@dataclass
class Options:
    """strip_checkpoint.py's options."""

    src: str = option(help="a dydet-v1 checkpoint (train.py or train_router.py output)")
    dst: str = option(help="where to write the release copy")
    half: bool = option(True, "keep fp32 weights (default: fp16, half the file)", flag="--fp32")


def run(options: Options | None = None, /, **kwargs) -> Path:
    """Write the stripped copy; returns its path."""
    opt = make_options(Options, options, **kwargs)
    if Path(opt.src).resolve() == Path(opt.dst).resolve():
        raise ValueError("the release copy must go to another file than the source")
    return strip_checkpoint(opt.src, opt.dst, half=opt.half)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__, done=lambda path: f"Saved {path}")


if __name__ == "__main__":
    sys.exit(main())
