"""models/zoo.py and ``python models/yolo.py --list``: one registry of what can be loaded by name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import yolo
from models.zoo import REPO_WEIGHTS, SHIPPED, ZOO, find_local, registry, zoo_entry
from tests.conftest import REPO


def test_registry_holds_releases_and_shipped_demo() -> None:
    reg = registry()
    assert set(ZOO) | set(SHIPPED) == set(reg)
    demo = reg["demo-dy-yolov7-tiny.pt"]
    assert demo.url is None and demo.cfg == "dy-yolov7-tiny" and demo.img_size == 128
    assert (REPO_WEIGHTS / "demo-dy-yolov7-tiny.pt").is_file()
    assert reg["dy-yolov7-w6.pt"].img_size == 1280 and reg["dy-yolov7.pt"].img_size == 640
    assert zoo_entry("some/dir/yolov7x.pt").cfg == "yolov7x"
    assert zoo_entry("best.pt") is None


def test_shipped_weights_are_found_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DYDET_WEIGHTS_DIR", str(tmp_path / "cache"))
    assert find_local("demo-dy-yolov7-tiny.pt") == REPO_WEIGHTS / "demo-dy-yolov7-tiny.pt"
    assert find_local("dy-yolov7.pt") is None
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "dy-yolov7.pt").write_bytes(b"x")
    assert find_local("dy-yolov7.pt") == tmp_path / "cache" / "dy-yolov7.pt"


def test_list_prints_every_config_and_weights_name(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("DYDET_WEIGHTS_DIR", str(tmp_path))
    yolo.main(["--list", "--json"])
    listing = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in listing["configs"]} == {p.stem for p in (REPO / "cfg").glob("*.yaml")}
    kinds = {c["name"]: c["kind"] for c in listing["configs"]}
    assert kinds["dy-yolov7"] == "dynamic" and kinds["yolov7"] == "plain"
    rows = {w["name"]: w for w in listing["weights"]}
    assert set(rows) == set(registry())
    assert rows["demo-dy-yolov7-tiny.pt"]["local"] and rows["demo-dy-yolov7-tiny.pt"]["img_size"] == 128
    assert rows["dy-yolov7.pt"]["local"] is None and rows["dy-yolov7.pt"]["cfg"] == "dy-yolov7"
    yolo.main(["--list"])
    text = capsys.readouterr().out
    assert "demo-dy-yolov7-tiny.pt" in text and "local: " in text and "not local" in text


def test_shipped_dualres_demo_loads_strictly_and_routes_a_batch() -> None:
    """weights/demo-dualres-yolov7-tiny.pt (scripts/make_dualres_demo.sh): a release copy of a
    calibrated DualRes router around the plain demo yolov7-tiny, loaded strictly, routing per image."""
    import torch

    from models.dualres import DualResModel
    from utils.weights.checkpoints import load_checkpoint, read_checkpoint

    entry = registry()["demo-dualres-yolov7-tiny.pt"]
    assert entry.url is None and entry.cfg == "dualres-yolov7-tiny" and entry.img_size == 128
    path = find_local("demo-dualres-yolov7-tiny.pt")
    assert path.resolve() == REPO_WEIGHTS / "demo-dualres-yolov7-tiny.pt" and path.stat().st_size >= entry.min_size
    ckpt = read_checkpoint(path)
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float16}
    assert not any(k in ckpt for k in ("optimizer", "scheduler", "epoch"))  # no training state
    assert ckpt["names"] == ["circle", "square", "triangle", "cross"] and ckpt["img_size"] == 128
    calib = ckpt["thresholds"]
    assert len(calib["table"]) == 101 and calib["img_size"] == 128
    assert calib["gflops"]["easy"] < calib["gflops"]["hard"]  # low resolution is the cheap route

    model, info = load_checkpoint(path)  # strict: every tensor lands, nothing left over
    assert isinstance(model, DualResModel) and model.route_names == ("low", "high")
    assert model.detector.cfg["name"] == "yolov7-tiny" and model.inner_threshold is None
    assert 0 < model.scale < 1 and info["thresholds"]["table"] == calib["table"]

    model.eval()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 128, 128)
    with torch.no_grad():
        phi = model.difficulty(x)
        threshold = float(phi.median())  # a mixed batch: some low, some high
        out = model(x, threshold=threshold)
        assert out.pred.shape[0] == 4 and out.pred.shape[2] == 5 + 4
        assert torch.equal(out.hard, phi > threshold) and 0 < int(out.hard.sum()) < 4
        for i in range(4):  # each image of the mixed batch equals running it alone
            alone = model(x[i:i + 1], threshold=threshold)
            assert bool(alone.hard[0]) == bool(out.hard[i])
            torch.testing.assert_close(alone.pred[0], out.pred[i], atol=1e-4, rtol=1e-4)
