"""Plain YOLOv7 models and the model factory; ``python models/yolo.py --cfg CFG`` prints model info."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.base import DetectorBase  # noqa: E402
from models.graph import release_schedule, run_layers, wire  # noqa: E402
from models.parse import build_layers, load_cfg, read_specs  # noqa: E402


class Model(DetectorBase):
    """A single YOLOv7 detector; parameters are named ``model.{i}.*`` as in YOLOv7."""

    def __init__(self, cfg: dict, names: list[str] | None = None) -> None:
        super().__init__(cfg, names)
        specs = read_specs(cfg)
        layers, _, _ = build_layers(specs, cfg)
        for m, s in zip(layers, specs):
            wire(m, [j + 1 for j in s.inputs], s.multi_input)  # position 0 is the image
        self.model = torch.nn.ModuleList(layers)
        self._release = release_schedule(self.model, first_position=1)
        self._init_weights()

    def forward(self, x: torch.Tensor):
        """Training: raw maps per level; inference: decoded predictions (bs, N, 5 + nc)."""
        return run_layers(self.model, [x], None if self.training else self._release)


def build_model(cfg: str | Path | dict, nc: int | None = None, names: list[str] | None = None) -> DetectorBase:
    """Build a plain, dynamic (Dy) or dynamic-resolution (DualRes) detector from a config name, path or dict."""
    d = load_cfg(cfg)
    if names is not None and nc is None:
        nc = len(names)
    if nc is not None and nc != d.get("nc"):
        d["nc"] = int(nc)
        d.pop("names", None)
    if "dualres" in d:
        from models.dualres import DualResModel
        return DualResModel.from_cfg(d, build_model(d["detector"], nc=nc, names=names))
    if "dynamic" in d:
        from models.dynamic import DyModel
        return DyModel(d, names)
    return Model(d, names)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Model summary: parameters and fused GFLOPs per route")
    p.add_argument("--cfg", default="dy-yolov7", help="config name or path (see cfg/)")
    p.add_argument("--img-size", type=int, default=640, help="square input size for GFLOPs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="list every config and every zoo weights name")
    return p.parse_args(argv)


def list_models() -> dict[str, list[dict]]:
    """Every built-in config and every weights name that loads without a path."""
    from models.parse import CFG_DIR
    from models.zoo import find_local, registry
    configs = []
    for path in sorted(CFG_DIR.glob("*.yaml")):
        d = load_cfg(path)
        configs.append({"name": path.stem, "kind": "dynamic" if "dynamic" in d else "dualres" if "dualres" in d else "plain", "nc": d.get("nc")})
    weights = []
    for name, e in registry().items():
        local = find_local(name)
        weights.append({"name": name, "cfg": e.cfg, "img_size": e.img_size, "what": e.what,
                        "local": str(local) if local else None, "url": e.url})
    return {"configs": configs, "weights": weights}


def _print_list(listing: dict[str, list[dict]]) -> None:
    print("configs (cfg/*.yaml):")
    for c in listing["configs"]:
        print(f"  {c['name']:<16} {c['kind']:<8} nc={c['nc']}")
    print("weights (pass the name as --weights):")
    for w in listing["weights"]:
        where = f"local: {w['local']}" if w["local"] else f"not local (downloaded on first use from {w['url']})"
        print(f"  {w['name']:<24} cfg {w['cfg']:<15} {w['img_size']:>5} px  {w['what']}; {where}")


def main(argv: list[str] | None = None) -> None:
    from models.flops import model_summary
    opt = parse_args(argv)
    if opt.list:
        listing = list_models()
        print(json.dumps(listing)) if opt.json else _print_list(listing)
        return
    try:
        model = build_model(opt.cfg)
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    summary = model_summary(model, opt.img_size)
    if opt.json:
        print(json.dumps(summary))
        return
    print(f"{model.cfg.get('name', opt.cfg)}: {summary['params']:,} parameters, {model.nc} classes")
    labels = dict(zip(("easy", "hard"), model.route_names))
    for route, g in summary["gflops"].items():
        print(f"  {labels.get(route, route):>5} route: {g:8.2f} GFLOPs at {opt.img_size}x{opt.img_size} (fused)")
    if "router_gflops" in summary:
        print(f"  router: {summary['router_gflops']:.6f} GFLOPs, {summary['router_params']:,} parameters")


if __name__ == "__main__":
    main()
