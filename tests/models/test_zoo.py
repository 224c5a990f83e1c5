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
