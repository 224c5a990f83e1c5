"""What can be loaded by name: the official release weights and the demo models shipped here.

``python models/yolo.py --list`` prints this registry with every config. A zoo name
(``dy-yolov7.pt``, ``demo-dy-yolov7-tiny.pt``, ``demo-dualres-yolov7-tiny.pt``) implies its
config and input size; a release file is looked for in the working directory, ``weights/`` (the
working directory's, then the repository's) and the download cache (``$DYDET_WEIGHTS_DIR``,
default ``~/.cache/dynamicdet/weights``), and downloaded there by :mod:`utils.weights.downloads`
when missing. Shipped files live in the repository's ``weights/`` folder and are never downloaded.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

__all__ = ["SHIPPED", "ZOO", "ZooEntry", "find_local", "registry", "weights_dir", "zoo_cfg", "zoo_entry"]

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
DYNAMICDET_RELEASE = "https://github.com/VDIGPKU/DynamicDet/releases/download/v0.1"
YOLOV7_RELEASE = "https://github.com/WongKinYiu/yolov7/releases/download/v0.1"
MB = 10**6


@dataclass(frozen=True)
class ZooEntry:
    """One weights file known by name.

    ``url`` is None for files shipped in ``weights/``. ``min_size`` is a conservative sanity
    bound in bytes (it catches an HTML error page or a truncated download), not the exact size;
    ``sha256`` is None where no published hash is known. ``cfg`` is the architecture
    (``cfg/<cfg>.yaml``) and ``img_size`` the input size the weights were trained at.
    """

    url: str | None
    cfg: str
    min_size: int
    sha256: str | None = None
    img_size: int = 640
    what: str = ""


def _release(base: str, cfg: str, min_mb: int, img_size: int = 640) -> ZooEntry:
    """Entry for ``<base>/<cfg>.pt`` with a ``min_mb`` megabyte sanity bound."""
    return ZooEntry(url=f"{base}/{cfg}.pt", cfg=cfg, min_size=min_mb * MB, img_size=img_size,
                    what="official COCO release (80 classes)")


# The official releases. No sha256 is published for them, so none is listed (never guess one).
ZOO: Mapping[str, ZooEntry] = MappingProxyType({
    f"{e.cfg}.pt": e for e in (
        _release(DYNAMICDET_RELEASE, "dy-yolov7", 100),
        _release(DYNAMICDET_RELEASE, "dy-yolov7x", 100),
        _release(DYNAMICDET_RELEASE, "dy-yolov7-w6", 100, 1280),
        _release(YOLOV7_RELEASE, "yolov7", 100),
        _release(YOLOV7_RELEASE, "yolov7x", 100),
        _release(YOLOV7_RELEASE, "yolov7-w6", 100, 1280),
        _release(YOLOV7_RELEASE, "yolov7-tiny", 10),
    )
})

# Demo models trained here on generated shapes (data/make_demo_data.py), shipped in weights/
# (recipes: docs/training.md; scripts/make_dualres_demo.sh for the DualRes one).
SHIPPED: Mapping[str, ZooEntry] = MappingProxyType({
    "demo-dy-yolov7-tiny.pt": ZooEntry(None, "dy-yolov7-tiny", 1 * MB, img_size=128,
                                       what="demo: 4 synthetic shapes (circle, square, triangle, cross)"),
    "demo-dualres-yolov7-tiny.pt": ZooEntry(None, "dualres-yolov7-tiny", 1 * MB, img_size=128,
                                            what="demo: DualRes router (96 / 128 px) around the plain demo "
                                                 "yolov7-tiny (detector 1 of demo-dy-yolov7-tiny.pt)"),
})


def registry() -> dict[str, ZooEntry]:
    """Every weights name that can be loaded without a path: shipped first, then releases."""
    return {**SHIPPED, **ZOO}


def zoo_entry(weights: str | Path) -> ZooEntry | None:
    """The registry entry of a weights name or path (by file name), else None."""
    return registry().get(Path(weights).name)


def zoo_cfg(weights: str | Path, zoo: Mapping[str, ZooEntry] | None = None) -> str | None:
    """The architecture name (``dy-yolov7`` ...) of a zoo weights name or path, else None."""
    entry = (registry() if zoo is None else zoo).get(Path(weights).name)
    return entry.cfg if entry else None


def weights_dir() -> Path:
    """The download cache: ``$DYDET_WEIGHTS_DIR`` if set, else ``~/.cache/dynamicdet/weights``."""
    env = os.environ.get("DYDET_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dynamicdet" / "weights"


def find_local(name: str | Path, cache_dir: Path | None = None) -> Path | None:
    """Where a bare weights name already is: the working directory, ./weights/, the
    repository's weights/, then the cache; None when it is in none of them."""
    name = Path(name)
    cache = Path(cache_dir) if cache_dir is not None else weights_dir()
    for candidate in (name, Path("weights") / name, REPO_WEIGHTS / name, cache / name):
        if candidate.is_file():
            return candidate
    return None
