"""Evaluate a detector on a YOLO-format dataset: mAP (pycocotools), P/R, speed, routing.

    python test.py --weights runs/train/exp/weights/best.pt --data data/demo.yaml --img-size 320
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.dynamic import route_mask
from utils.weights.backends import load_model
from utils.routing.calibration import resolve_threshold
from utils.cli import script_main
from utils.data.config import load_data_config
from utils.data.datasets import create_dataloader
from utils.evaluation.evaluator import DetectionStats, ground_truth, to_original
from models.flops import route_gflops
from utils.paths import increment_path
from utils.inference.predictor import BatchPrediction, Predictor

LOGGER = logging.getLogger("dydet.test")


def run(data: str | Path, weights: str | Path | None = None, cfg: str | None = None, batch_size: int = 32,
        img_size: int = 640, conf_thres: float = 0.001, iou_thres: float = 0.65, task: str = "val",
        device: str = "", dy_thres: float | str | None = None, target_gflops: float | None = None,
        target_latency: float | None = None, save_json: bool = False, verbose: bool = False,
        project: str | Path = "runs/test", name: str = "exp", exist_ok: bool = False, plots: bool = True,
        workers: int = 4, model: torch.nn.Module | None = None, dataloader=None, save_dir: Path | None = None,
        names: list[str] | None = None, time_routed: bool = True, gflops: dict | None = None,
        calibration: dict | None = None, dy_sweep: bool = False) -> dict:
    """Score a model on split ``task`` of ``data``. Returns the metrics dict (see README).

    For dynamic models the routing threshold is ``dy_thres`` (a number or 'pK' = K% hard from
    the checkpoint's calibration), or chosen for ``target_gflops`` / ``target_latency`` (ms).
    ``dy_sweep`` also scores every hard fraction 0, 10, ..., 100% from the same pass (sweep.csv,
    plots, AUC-Policy of router vs random routing).
    """
    if task not in ("val", "test", "speed"):
        raise ValueError(f"--task must be val, test or speed, not {task!r}")
    model, names, stored = _model(model, weights, cfg, device, names)
    save_dir = Path(save_dir) if save_dir else increment_path(Path(project) / name, exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    if dataloader is None:
        split = "val" if task == "speed" else task
        dcfg = load_data_config(data, require=(split,))
        stride = int(model.stride.max())
        rect = not _fixed_size(model, img_size)
        # pad 0: the letterbox of detect.py and of the router calibration (φ depends on the padding)
        dataloader, _ = create_dataloader(dcfg.split(split), img_size, batch_size, stride, rect=rect,
                                          pad=0.0, workers=workers, prefix=f"{split}: ", nc=len(names))
    if gflops is None:
        gflops = route_gflops_or_empty(model, img_size)
    threshold, calibration = None, calibration or stored
    if dy_sweep and not model.is_dynamic:
        raise ValueError("--dy-sweep needs a dynamic model (dy-* config)")
    if dy_sweep and not hasattr(model, "forward_both"):
        raise ValueError("--dy-sweep scores both detectors on every image: pass PyTorch weights, not ONNX")
    if model.is_dynamic:
        latency = _route_latency(model, img_size) if _needs_latency(calibration, target_latency) else None
        threshold, how = resolve_threshold(dy_thres, calibration, target_latency=target_latency,
                                           target_gflops=target_gflops, gflops=gflops or None,
                                           latencies=latency, default=model.threshold)
        LOGGER.info("routing: %s", how)
    results = _evaluate(model, names, dataloader, conf_thres, iou_thres, threshold, img_size, gflops,
                        task == "speed" or time_routed, save_dir if plots else None)
    extras = {k: results.pop(k) for k in ("_streams", "_phi", "_paths")}
    if model.is_dynamic:
        results["dynamic"].update(_routing_analysis(model, extras, calibration, threshold, img_size, gflops,
                                                    dy_sweep, save_dir, plots))
    _report(results, names, verbose)
    if save_json:
        _save_json(results.pop("_preds"), save_dir / "predictions.json")
    results.pop("_preds", None)
    (save_dir / "metrics.json").write_text(json.dumps(_jsonable(results), indent=2))
    return results


def _model(model, weights, cfg, device, names) -> tuple[torch.nn.Module, list[str], dict]:
    """The model to score, its class names and its stored routing calibration."""
    if model is not None:
        return model.eval(), list(names or model.names), {}
    if weights is None:
        raise ValueError("test.py needs --weights (or a model when called from Python)")
    model, info = load_model(weights, cfg=cfg, device=device)
    if hasattr(model, "optimize_for_inference"):
        model.optimize_for_inference()  # fused, CPU fast path where it applies
    return model.eval(), list(names or info.get("names") or model.names), info.get("thresholds") or {}


def _fixed_size(model, img_size: int) -> bool:
    """Whether the model takes one input size only (an ONNX export); it must be ``img_size``."""
    size = None if isinstance(model, torch.nn.Module) else getattr(model, "img_size", None)
    if size is not None and tuple(size) != (img_size, img_size):
        raise ValueError(f"the model was exported for {size[0]}x{size[1]} inputs; run with --img-size {size[0]}")
    return size is not None


def _evaluate(model, names, loader, conf, iou, threshold, img_size, gflops, time_routed, plot_dir) -> dict:
    predictor = Predictor(model, conf, iou, multi_label=True)
    streams = {"all": DetectionStats(names)}
    if model.is_dynamic and hasattr(model, "forward_both"):  # ONNX exports: routed results only
        streams.update(detector1=DetectionStats(names), detector2=DetectionStats(names))
    timing, routes, phis, pixels = np.zeros(3), [], [], []
    n_images, preds_json, all_paths = 0, [], []
    for b, (imgs, labels, paths, shapes) in enumerate(tqdm(loader, desc="test", leave=False)):
        hw = tuple(imgs.shape[2:])
        batch = _predict(predictor, imgs, threshold, time_routed)
        timing += [batch["routed"].times.get(k, 0.0) for k in ("pre", "infer", "nms")]
        for key, stats in streams.items():
            for i, det in enumerate(batch[key].dets):
                gt = ground_truth(labels, i, hw, shapes[i])
                det = det.clone()
                det[:, :4] = to_original(det[:, :4], hw, shapes[i])
                stats.add(det.cpu().numpy(), gt, _orig_hw(shapes[i], hw))
                if key == "all":
                    preds_json.append((paths[i], det.cpu().numpy()))
        if batch["routed"].hard is not None:
            routes.append(batch["routed"].hard.cpu())
            phis.append(batch["routed"].phi.float().cpu())
        all_paths.extend(paths)
        pixels.append(hw[0] * hw[1] * len(paths))
        n_images += len(paths)
        if plot_dir is not None and b < 3:
            _plot_batch(imgs, labels, paths, batch["routed"].dets, names, plot_dir, b)
    out = _summarise(streams, timing, n_images, routes, gflops, pixels, img_size, plot_dir, preds_json)
    phi = torch.cat(phis).numpy() if phis else None
    return {**out, "_streams": streams, "_phi": phi, "_paths": all_paths}


def _predict(predictor: Predictor, imgs, threshold, time_routed) -> dict[str, BatchPrediction]:
    """Routed detections (timed) and, for dynamic models, both detectors' detections."""
    if not predictor.is_dynamic or not hasattr(predictor.model, "forward_both"):
        out = predictor(imgs, threshold)
        return {"routed": out, "all": out}
    d1, d2 = predictor.both(imgs)
    hard = route_mask(d1.phi, threshold)
    routed = predictor(imgs, threshold) if time_routed else None
    merged = [d2.dets[i] if hard[i] else d1.dets[i] for i in range(len(hard))]
    all_ = BatchPrediction(merged, d1.phi, hard, routed.times if routed else d1.times)
    return {"routed": all_, "all": all_, "detector1": d1, "detector2": d2}


def _needs_latency(calibration: dict | None, target_latency: float | None) -> bool:
    """A latency target without stored route latencies: measure them on this machine."""
    return target_latency is not None and not (calibration or {}).get("latency_ms")


def _route_latency(model, img_size: int) -> dict[str, float]:
    from utils.routing.latency import inference_copy, route_latency
    latency = route_latency(inference_copy(model), img_size)
    LOGGER.info("measured route latencies at %d px: easy %.1f ms, hard %.1f ms", img_size,
                latency["easy"], latency["hard"])
    return latency


def _routing_analysis(model, extras, calibration, threshold, img_size, gflops, dy_sweep, save_dir, plots) -> dict:
    """φ histogram and gallery, threshold stability and (``dy_sweep``) the accuracy-speed sweep."""
    from utils.routing import report as routing_report
    from utils.routing import sweep
    phi, out = extras["_phi"], {}
    if phi is None or not len(phi):
        return out
    if plots:
        routing_report.plot_phi_histogram(phi, save_dir / "phi_histogram.png", threshold)
        routing_report.plot_phi_gallery(phi, extras["_paths"], save_dir / "phi_gallery.jpg")
    report = routing_report.stability(calibration, phi)
    if report:
        out["stability"] = report
        print(routing_report.format_stability(report))
    if dy_sweep:
        s = extras["_streams"]
        data = sweep.SweepData(list(s["all"].names), s["all"].gts, s["detector1"].preds, s["detector2"].preds,
                               phi, s["all"].sizes)
        out["sweep"] = sweep.run_sweep(data, save_dir, gflops or None, _route_latency(model, img_size), plots=plots)
        print(sweep.format_sweep(out["sweep"]))
    return out


def route_gflops_or_empty(model, img_size: int) -> dict[str, float]:
    if not isinstance(model, torch.nn.Module):  # ONNX Runtime: GFLOPs stored at export
        return dict(getattr(model, "gflops", {}))
    try:
        return route_gflops(model, img_size)
    except Exception as e:  # GFLOPs are informative only
        LOGGER.warning("GFLOPs not measured: %s", e)
        return {}


def _orig_hw(shape_info, hw) -> tuple[int, int]:
    return tuple(int(v) for v in shape_info[0]) if shape_info is not None else hw


def _summarise(streams, timing, n, routes, gflops, pixels, img_size, plot_dir, preds_json) -> dict:
    res = streams["all"].compute()
    out = {k: res[k] for k in ("precision", "recall", "map50", "map", "per_class")}
    out["images"] = n
    out["speed_ms"] = dict(zip(("pre", "infer", "nms"), (timing / max(n, 1)).tolist()))
    if routes:
        hard = torch.cat(routes)
        scale = sum(pixels) / (n * img_size ** 2) if n else 1.0
        n_hard = int(hard.sum())
        avg = (gflops.get("easy", 0) * (n - n_hard) + gflops.get("hard", 0) * n_hard) / max(n, 1) * scale
        out["dynamic"] = {"easy": n - n_hard, "hard": n_hard, "avg_gflops": avg}
        for key in ("detector1", "detector2") if "detector1" in streams else ():
            r = streams[key].compute()
            out["dynamic"][key] = {k: r[k] for k in ("precision", "recall", "map50", "map")}
    elif gflops:
        out["avg_gflops"] = gflops["all"] * sum(pixels) / (max(n, 1) * img_size ** 2)
    if plot_dir is not None:
        streams["all"].plot(plot_dir, res)
    out["_preds"] = preds_json
    return out


def _plot_batch(imgs, labels, paths, dets, names, save_dir: Path, b: int) -> None:
    from utils.evaluation.plots import plot_images
    plot_images(imgs, labels, paths, names, save_dir / f"test_batch{b}_labels.jpg")
    preds = [d.cpu() for d in dets]
    plot_images(imgs, preds, paths, names, save_dir / f"test_batch{b}_pred.jpg")


def _report(res: dict, names: list[str], verbose: bool) -> None:
    print(f"{'class':>20}{'images':>8}{'P':>8}{'R':>8}{'mAP@.5':>9}{'mAP@.5:.95':>12}")
    print(f"{'all':>20}{res['images']:>8}{res['precision']:>8.3f}{res['recall']:>8.3f}"
          f"{res['map50']:>9.3f}{res['map']:>12.3f}")
    if verbose:
        for c, r in sorted(res["per_class"].items()):
            print(f"{names[int(c)]:>20}{r['n_gt']:>8}{'':>8}{'':>8}{r['ap50']:>9.3f}{r['ap']:>12.3f}")
    s = res["speed_ms"]
    print(f"Speed: {s['pre']:.1f} ms pre-process, {s['infer']:.1f} ms inference, {s['nms']:.1f} ms NMS per image")
    if "dynamic" in res:
        d = res["dynamic"]
        print(f"Routing: {d['easy']} easy, {d['hard']} hard, {d['avg_gflops']:.2f} GFLOPs per image on average")
        for key in ("detector1", "detector2") if "detector1" in d else ():
            print(f"  {key}: mAP@.5 {d[key]['map50']:.3f}, mAP@.5:.95 {d[key]['map']:.3f}")


def _save_json(preds, path: Path) -> None:
    from utils.evaluation.metrics import coco_json_predictions
    ids = [int(Path(p).stem) if Path(p).stem.isnumeric() else Path(p).stem for p, _ in preds]
    path.write_text(json.dumps(coco_json_predictions([d for _, d in preds], ids)))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "pr"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (ours or official) or .onnx export to evaluate")
    p.add_argument("--cfg", default=None, help="architecture for official checkpoints, e.g. dy-yolov7")
    p.add_argument("--data", required=True, help="data YAML")
    p.add_argument("--img-size", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.65)
    p.add_argument("--task", default="val", choices=["val", "test", "speed"])
    p.add_argument("--device", default="", help="cpu, 0, 0,1 ... (default: CUDA 0 if available)")
    p.add_argument("--dy-thres", default=None,
                   help="routing threshold of dynamic models: a number in [0, 1], or pK = K%% hard images")
    p.add_argument("--target-gflops", type=float, default=None, help="choose the threshold for this average cost")
    p.add_argument("--target-latency", type=float, default=None, help="choose the threshold for this latency (ms)")
    p.add_argument("--dy-sweep", action="store_true",
                   help="dynamic models: score every hard fraction 0..100%% from one pass (sweep.csv, plots)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--save-json", action="store_true", help="write COCO-format predictions.json")
    p.add_argument("--verbose", action="store_true", help="per-class results")
    p.add_argument("--project", default="runs/test")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return script_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
