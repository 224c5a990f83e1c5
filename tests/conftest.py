"""Shared test fixtures: paths to the reference manifests and small helpers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "reference"  # official checkpoints' key -> shape manifests


def load_script(name: str):
    """``scripts/<name>.py`` imported as the module ``name`` (the folder is not a package)."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def reference_keys(name: str) -> dict[str, list[int]]:
    """Official checkpoint key -> shape manifest (shipped in tests/reference/)."""
    path = REFERENCE / f"{name}.official-keys.json"
    if not path.is_file():
        pytest.fail(f"reference manifest {path} is missing")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (for fusion tests)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def pytest_configure(config) -> None:
    """Under pytest-xdist (``-n``) each worker computes on one thread, and so do the scripts the
    tests start: the workers share the machine's cores, and oversubscribed OpenMP pools spin."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items: list) -> None:
    """Tests marked ``long(seconds)`` first, longest first, so that their files start early on the
    parallel workers (``--dist loadfile`` hands out files in this order) and the workers end
    together; otherwise collection order."""
    def seconds(item) -> float:
        mark = item.get_closest_marker("long")
        return float(mark.args[0]) if mark is not None else 0.0
    items.sort(key=lambda item: -seconds(item))


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory) -> None:
    """The per-user cache (label caches, route latencies) of this test session only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty per-user cache for one test (e.g. route latencies it fakes)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "dynamicdet"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- sample data
def write_sample(root: Path, name: str, hw: tuple[int, int] = (48, 64),
                 labels: str | None = "0 0.5 0.5 0.25 0.25\n", colour=(0, 160, 0)) -> Path:
    """A solid image with a filled box for each label line (if the line is valid)."""
    img_path = root / "images" / f"{name}.jpg"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((*hw, 3), 60, np.uint8)
    if labels is not None:
        lbl = root / "labels" / f"{name}.txt"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        lbl.write_text(labels)
        for line in labels.splitlines():
            try:
                _, cx, cy, w, h = map(float, line.split())
            except ValueError:
                continue
            x1, y1 = int((cx - w / 2) * hw[1]), int((cy - h / 2) * hw[0])
            x2, y2 = int((cx + w / 2) * hw[1]), int((cy + h / 2) * hw[0])
            cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), colour, -1)
    cv2.imwrite(str(img_path), img)
    return img_path


def make_dataset(root: Path, n: int = 6, nc: int = 3) -> Path:
    """``n`` images of various aspect ratios with 1-3 boxes each; returns the images folder."""
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (64, 48), (64, 64), (40, 80), (80, 40), (56, 72)]
    for i in range(n):
        lines = []
        for _ in range(1 + i % 3):
            cx, cy = rng.uniform(0.3, 0.7, 2)
            w, h = rng.uniform(0.15, 0.35, 2)
            lines.append(f"{int(rng.integers(0, nc))} {cx:.4f} {cy:.4f} {w:.4f} {h:.4f}")
        write_sample(root, f"im{i}", sizes[i % len(sizes)], "\n".join(lines) + "\n")
    return root / "images"


def write_video(path: Path, n_frames: int = 4, hw: tuple[int, int] = (32, 48), fps: float = 10.0) -> Path:
    """A small MJPG .avi whose frames get brighter one by one."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (hw[1], hw[0]))
    for i in range(n_frames):
        writer.write(np.full((*hw, 3), 40 + 40 * i, np.uint8))
    writer.release()
    return path


def tiny_checkpoint(path: Path, cfg: str = "dy-yolov7-tiny", nc: int = 3, thresholds: dict | None = None) -> Path:
    """A randomly initialised model saved as a dydet-v1 checkpoint (class names a, b, c, ...)."""
    from models.yolo import build_model
    from utils.weights.checkpoints import save_checkpoint

    names = [chr(ord("a") + i) for i in range(nc)]
    return save_checkpoint(path, build_model(cfg, nc=nc, names=names), names=names, thresholds=thresholds)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    inputs gain nothing from threads, and a busy machine makes them much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
