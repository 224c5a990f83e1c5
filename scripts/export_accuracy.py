"""Exports (OpenVINO fp32 / INT8 / bf16, ONNX Runtime, INT8 single-route pairs) against their .pt.

    python scripts/export_accuracy.py --weights weights/demo-dy-yolov7-tiny.pt --data /tmp/heldout/demo.yaml \
        --exports ov=demo_openvino ov-int8=demo_int8_openvino ov-bf16=demo_openvino@bf16 \
                  ort-int8=demo-easy-int8.onnx+demo-hard-int8.onnx

For each export, on --data's val images and against the fused PyTorch model (``pt``): each
route's mAP@.5:.95 (all easy: threshold 1; all hard: threshold 0), the Spearman rank correlation
of φ, the calibrated dial's hard fractions (the checkpoint's table) and the accuracy-speed sweep
with its AUC-Policy; the sweep's latency axis is each backend's measured batch-1 route latency.
An export is ``name=path`` (an ``.xml``, an ``*_openvino/`` folder or a routed ``.onnx``),
``name=path@bf16`` (OpenVINO in bf16) or ``name=easy.onnx+hard.onnx`` (two single-route exports).
Writes ``accuracy.json`` and ``accuracy.md`` to --out.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import torch  # noqa: E402

from utils.benchmark.stats import summarize  # noqa: E402
from utils.benchmark.timing import SETTLE_S, interleaved  # noqa: E402
from utils.cli import script_main  # noqa: E402
from utils.data.config import load_data_config  # noqa: E402
from utils.data.datasets import create_dataloader  # noqa: E402
from utils.export import accuracy  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402
from utils.options import make_options, option, parse_options  # noqa: E402
from utils.weights.backends import load_model  # noqa: E402


@dataclass
class Options:
    """export_accuracy.py's options."""

    weights: str = option(help="the PyTorch checkpoint the exports were made from")
    data: str = option(help="data YAML; its val split is scored")
    exports: list[str] = option(help="name=path, name=path@bf16 or name=easy.onnx+hard.onnx")
    img_size: int = option(0, "input size (default: the checkpoint's)")
    batch_size: int = option(32)
    threads: int = option(0, "torch / ONNX Runtime / OpenVINO threads (0: library default)")
    latency_reps: int = option(20, "timed batch-1 calls per route for the sweep's latency axis (0: none)")
    out: str = option("runs/export_accuracy", "folder for accuracy.json and accuracy.md")


def load_export(spec: str, threads: int | None):
    """``path`` / ``path@bf16`` / ``easy.onnx+hard.onnx`` -> a model or an (easy, hard) pair."""
    from utils.runtime.onnx_model import OnnxModel
    path, _, precision = spec.partition("@")
    if "+" in path:
        easy, hard = path.split("+")
        return OnnxModel(easy, threads=threads), OnnxModel(hard, threads=threads)
    if path.endswith(".onnx"):
        return OnnxModel(path, threads=threads)
    from utils.runtime.openvino_model import OpenVinoModel
    return OpenVinoModel(path, threads=threads, precision=precision or None)


def route_latency(model, img_size: int, reps: int) -> dict[str, float] | None:
    """Median batch-1 latency (ms) of each route of ``model`` (or of an (easy, hard) pair)."""
    if reps <= 0:
        return None
    x = torch.rand(1, 3, img_size, img_size)
    settle = 0.0
    if isinstance(model, tuple):  # two sessions: let one's thread pool go idle before the other runs
        fns, settle = {"easy": lambda: model[0](x), "hard": lambda: model[1](x)}, SETTLE_S
    else:
        fns = {"easy": lambda: model(x, threshold=1.0), "hard": lambda: model(x, threshold=0.0)}
    with torch.inference_mode():
        times = interleaved(fns, reps, warmup=3, settle_s=settle)
    return {k: summarize(v)["median"] for k, v in times.items()}


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Compare every export with the .pt; prints and writes the markdown, returns the JSON."""
    opt = make_options(Options, options, **kwargs)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    ref_model, info = load_model(opt.weights, device="cpu")
    img_size = opt.img_size or int(info.get("img_size") or 640)
    names = list(info["names"])
    data = load_data_config(opt.data, require=("val",))
    loader, _ = create_dataloader(data.split("val"), img_size, opt.batch_size, int(ref_model.stride.max()),
                                  rect=False, pad=0.0, workers=0, nc=len(names))  # square batches, as test.py
    fast = ref_model.float().fuse().eval()
    ref = accuracy.route_pass(fast, loader, names, img_size, "pt")
    latency = {"pt": route_latency(fast.optimize_for_inference(), img_size, opt.latency_reps)}
    table = (info.get("thresholds") or {}).get("table")
    gflops = (info.get("thresholds") or {}).get("gflops")
    result: dict = {"weights": opt.weights, "data": opt.data, "img_size": img_size, "comparisons": {}}
    md = [f"## Export accuracy: `{opt.weights}` at {img_size} px on `{opt.data}`", ""]
    for entry in opt.exports:
        name, _, spec = entry.partition("=")
        model = load_export(spec, opt.threads or None)
        if isinstance(model, tuple):
            other = accuracy.static_pair_pass(*model, loader, names, img_size, name)
        else:
            other = accuracy.route_pass(model, loader, names, img_size, name)
        latency[name] = route_latency(model, img_size, opt.latency_reps)
        c = accuracy.compare(ref, other, table, gflops=gflops, latency=latency)
        c["goals"] = accuracy.goals(c)
        c["latency_ms"] = {"pt": latency["pt"], name: latency[name]}
        result["comparisons"][name] = c
        md += [accuracy.format_comparison(c), "", accuracy.format_goals(c["goals"]), ""]
        print(md[-4], "\n", md[-2], flush=True)
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "accuracy.json", json.dumps(result, indent=1, default=float))
    atomic_write_text(out / "accuracy.md", "\n".join(md))
    return result


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
