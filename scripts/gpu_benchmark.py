"""GPU benchmark: a dynamic detector's routes in fp16 on CUDA against its plain base model, beside
the paper's V100 ratios.

    python scripts/gpu_benchmark.py                      # dy-yolov7 at 640, fp16, batch 1 and 32, CUDA 0
    python scripts/gpu_benchmark.py --cfg dy-yolov7x --batch 1 16 --reps 30

For each batch size: the easy route, the hard route and the plain model (fused, eager PyTorch,
CUDA-synchronised, interleaved rounds), the routing overhead (easy / plain) and hard / plain; at
the largest batch a mixed batch (half hard) against its easy and hard halves run alone. Random
weights: speed does not depend on them. The paper's numbers are FPS on one V100 at batch 1
(DynamicDet Tab. 1): YOLOv7 114, Dy-YOLOv7 / 100 (all hard) 83 and / 10 110, so hard / plain =
114 / 83 = 1.37 and easy / plain = 1.00 (from 1/110 = 0.9 t_easy + 0.1 / 83). Another GPU gives
other times: compare the ratios. Writes gpu_benchmark.json and gpu_benchmark.md to --out.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import torch  # noqa: E402

from models.flops import route_gflops  # noqa: E402
from models.yolo import build_model  # noqa: E402
from utils.benchmark.batches import split_batch  # noqa: E402
from utils.benchmark.runner import plain_counterpart  # noqa: E402
from utils.benchmark.stats import latency_metrics, mixed_metrics, paired_ratio, summarize  # noqa: E402
from utils.benchmark.timing import interleaved  # noqa: E402
from utils.cli import script_main  # noqa: E402
from utils.options import make_options, option, parse_options  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402

PAPER_V100_FPS = {"plain": 114.0, "hard": 83.0, "p10": 110.0}  # YOLOv7, Dy-YOLOv7 / 100, Dy-YOLOv7 / 10


@dataclass
class Options:
    """gpu_benchmark.py's options."""

    cfg: str = option("dy-yolov7", "a dynamic (dy-*) config")
    img_size: int = option(640)
    batch: list[int] = option([1, 32], "batch sizes (the largest also as a mixed batch, half hard)")
    reps: int = option(20, "timed rounds")
    warmup: int = option(5, "untimed rounds first")
    device: str = option("0", "a CUDA index (cpu runs fp32 only, for a quick check of the script)")
    half: bool = option(True, "fp32 instead of fp16", flag="--fp32")
    out: str = option("runs/gpu_benchmark", "folder for gpu_benchmark.json and gpu_benchmark.md")


def paper_ratios(fps: dict[str, float] = PAPER_V100_FPS) -> dict[str, float]:
    """Easy / plain and hard / plain latency ratios implied by the paper's V100 FPS."""
    t_easy = (1 / fps["p10"] - 0.1 / fps["hard"]) / 0.9
    return {"easy_vs_plain": t_easy * fps["plain"], "hard_vs_plain": fps["plain"] / fps["hard"]}


def _models(opt: Options, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, float]:
    """The dynamic and plain models (fused, fp16 on CUDA) and a batch with a threshold splitting it in half."""
    torch.manual_seed(0)
    model = build_model(opt.cfg).to(device).eval()
    base = plain_counterpart(opt.cfg)
    if not model.is_dynamic or base is None:
        raise ValueError(f"{opt.cfg} is not a dynamic config with a plain base model")
    plain = build_model(base).to(device).eval()
    x, threshold, _ = split_batch(model, max(opt.batch), opt.img_size, device)
    dtype = torch.float16 if opt.half else torch.float32
    return model.fuse().to(dtype), plain.fuse().to(dtype), x.to(dtype), threshold


@torch.inference_mode()
def _routes(model, plain, x: torch.Tensor, opt: Options, gflops: dict) -> dict:
    fns = {"easy": lambda: model(x, threshold=1.0), "hard": lambda: model(x, threshold=0.0), "plain": lambda: plain(x)}
    lat = {k: summarize(v) for k, v in interleaved(fns, opt.reps, opt.warmup).items()}
    metrics = latency_metrics(lat, gflops)
    metrics["hard_vs_plain"] = paired_ratio([lat["hard"]], [lat["plain"]])
    return {"batch": len(x), "latency": lat, "metrics": metrics}


@torch.inference_mode()
def _mixed(model, x: torch.Tensor, threshold: float, opt: Options) -> dict:
    hard = model(x, threshold=threshold).hard
    easy_x, hard_x = x[~hard], x[hard]
    times = interleaved({"mixed": lambda: model(x, threshold=threshold),
                         "easy_part": lambda: model(easy_x, threshold=1.0),
                         "hard_part": lambda: model(hard_x, threshold=0.0)}, opt.reps, opt.warmup)
    s = {k: summarize(v) for k, v in times.items()}
    return {"batch": len(x), "n_hard": int(hard.sum()), **s,
            "metrics": mixed_metrics(s["mixed"], s["easy_part"], s["hard_part"], len(x))}


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Measure, write gpu_benchmark.json / .md to ``out``, return the result."""
    opt = make_options(Options, options, **kwargs)
    device = select_device(opt.device)
    if opt.half and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; pass --fp32 to run on the CPU")
    model, plain, x, threshold = _models(opt, device)
    gflops = {**route_gflops(build_model(opt.cfg), opt.img_size),
              "plain": route_gflops(build_model(plain_counterpart(opt.cfg)), opt.img_size)["all"]}
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    try:
        routes = [_routes(model, plain, x[:b], opt, gflops) for b in sorted(set(opt.batch))]
        mixed = _mixed(model, x, threshold, opt) if max(opt.batch) > 1 else None
    finally:
        torch.backends.cudnn.benchmark = benchmark
    result = {"meta": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "torch": torch.__version__, "cuda": torch.version.cuda, "cfg": opt.cfg,
                       "img_size": opt.img_size, "dtype": "fp16" if opt.half else "fp32", "reps": opt.reps},
              "gflops": gflops, "routes": routes, "mixed": mixed, "paper_v100": paper_ratios()}
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_benchmark.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "gpu_benchmark.md").write_text(markdown(result), encoding="utf-8")
    return result


def markdown(result: dict) -> str:
    """The result as markdown tables (latencies in ms, medians)."""
    m, paper = result["meta"], result["paper_v100"]
    lines = [f"GPU benchmark: {m['cfg']} at {m['img_size']}, {m['dtype']}, {m['device']} (torch {m['torch']})", "",
             "| batch | easy ms | hard ms | plain ms | easy / plain | hard / plain | paper V100 easy / hard vs plain |",
             "|---|---|---|---|---|---|---|"]
    for r in result["routes"]:
        lat, met = r["latency"], r["metrics"]
        lines.append(f"| {r['batch']} | {lat['easy']['median']:.2f} | {lat['hard']['median']:.2f} | "
                     f"{lat['plain']['median']:.2f} | {met['routing_overhead']:.3f} | {met['hard_vs_plain']:.3f} | "
                     f"{paper['easy_vs_plain']:.2f} / {paper['hard_vs_plain']:.2f} |")
    mixed = result["mixed"]
    if mixed:
        lines += ["", f"Mixed batch of {mixed['batch']} ({mixed['n_hard']} hard): {mixed['mixed']['median']:.2f} ms, "
                      f"its halves alone {mixed['metrics']['ideal_ms']:.2f} ms, efficiency "
                      f"{mixed['metrics']['efficiency']:.3f} (ideal / mixed)"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__, done=lambda result: markdown(result))


if __name__ == "__main__":
    sys.exit(main())
