"""Side by side: the accuracy-speed sweep of several dynamic models on the same images.

    python scripts/compare_routers.py --data data/demo/demo.yaml \
        --weights demo-dy-yolov7-tiny.pt demo-dualres-yolov7-tiny.pt

For each weights file, test.py's sweep (--dy-sweep) on --data's val images: AUC-Policy of
mAP@.5:.95 for the router, for random routing with the same shares and for the oracle (the images
that gain most go first), the routing efficiency (router - random) / (oracle - random), the GFLOPs
range from 0% to 100% of images on the expensive route, and the mAP at both ends. Prints one
markdown table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import test as test_script  # noqa: E402
from utils.cli import script_main  # noqa: E402
from utils.defaults import BATCH, WORKERS  # noqa: E402
from utils.options import make_options, option, parse_options  # noqa: E402
from utils import option_groups as groups  # noqa: E402

COLUMNS = ("weights", "routes", "AUC-Policy router", "AUC-Policy random", "router - random", "AUC-Policy oracle",
           "efficiency", "GFLOPs range", "mAP@.5:.95 cheap / expensive route")


@dataclass
class Options:
    """compare_routers.py's options."""

    weights: list[str] = option(help="dynamic checkpoints (Dy or DualRes) to compare")
    data: str = option(help="data YAML; its val split is scored")
    img_size: int | None = option(None, "inference size (default: each model's training size)")
    batch_size: int = option(BATCH["test"])
    device: str = groups.device()
    workers: int = option(WORKERS)
    project: str = option("runs/compare", "each model's sweep goes to <project>/<weights stem>")


def run(options: Options | None = None, /, **kwargs) -> list[dict]:
    """One row per weights file (see the module doc); prints the table and returns the rows."""
    opt = make_options(Options, options, **kwargs)
    rows = [_row(w, opt) for w in opt.weights]
    print(markdown(rows))
    return rows


def _row(weights: str, opt: Options) -> dict:
    m = test_script.run(weights=weights, data=opt.data, img_size=opt.img_size, batch_size=opt.batch_size,
                        device=opt.device, workers=opt.workers, dy_sweep=True, plots=False,
                        project=opt.project, name=Path(weights).stem, exist_ok=True)
    dyn, sweep = m["dynamic"], m["dynamic"]["sweep"]
    router = sweep["points"]["router"]
    auc, rand = sweep["auc_policy_router"], sweep["auc_policy_random"]
    return {"weights": Path(weights).name, "routes": "/".join(dyn["route_names"]), "auc_router": auc,
            "auc_random": rand, "gain": None if auc is None or rand is None else auc - rand,
            "auc_oracle": sweep["auc_policy_oracle"], "efficiency": sweep["routing_efficiency"],
            "gflops": (router[0]["gflops"], router[-1]["gflops"]), "map": (router[0]["map"], router[-1]["map"])}


def _num(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    """The comparison as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"`{r['weights']}`", r["routes"], _num(r["auc_router"]), _num(r["auc_random"]),
                 ("+" if (r["gain"] or 0) >= 0 else "") + _num(r["gain"]), _num(r["auc_oracle"]),
                 _num(r["efficiency"], 2),
                 f"{r['gflops'][0]:.2f}–{r['gflops'][1]:.2f}", f"{r['map'][0]:.3f} / {r['map'][1]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
