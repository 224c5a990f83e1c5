"""Result objects: YOLO labels, drawing, saving, repr."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.data.images import read_image
from utils.inference.results import Result


def _result(route: str | None = "hard", phi: float | None = 0.734, n: int = 2) -> Result:
    img = np.full((100, 200, 3), 128, np.uint8)
    boxes = np.array([[20, 10, 60, 50], [100, 0, 200, 100]], np.float32)[:n]
    return Result("dir/pic.jpg", img, boxes, np.array([0.9, 0.4])[:n], np.array([2, 0])[:n],
                  ["cat", "dog", "bird"], route, phi, {"pre": 1.0, "infer": 10.0, "nms": 0.5})


def test_fields_are_normalised_arrays() -> None:
    r = _result()
    assert len(r) == 2 and r.boxes.dtype == np.float32 and r.classes.dtype == np.int64
    assert r.counts() == {"bird": 1, "cat": 1}
    named = Result("x", r.orig_img, r.boxes, r.scores, r.classes, {0: "cat", 1: "dog", 2: "bird"})
    assert named.names == ["cat", "dog", "bird"] and named.route is None and named.caption is None


def test_to_txt_yolo_format(tmp_path: Path) -> None:
    path = _result().to_txt(tmp_path / "labels" / "pic.txt")
    rows = [line.split() for line in path.read_text().splitlines()]
    assert [r[0] for r in rows] == ["2", "0"]
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in rows],
                               [[0.2, 0.3, 0.2, 0.4], [0.75, 0.5, 0.5, 1.0]], atol=1e-6)
    rows = [line.split() for line in _result().to_txt(tmp_path / "c.txt", save_conf=True).read_text().splitlines()]
    assert [len(r) for r in rows] == [6, 6] and float(rows[1][5]) == pytest.approx(0.4)


def test_to_txt_without_detections_writes_an_empty_file(tmp_path: Path) -> None:
    assert _result(n=0).to_txt(tmp_path / "e.txt").read_text() == ""


def test_plot_draws_boxes_and_caption_without_touching_the_original() -> None:
    r = _result()
    before = r.orig_img.copy()
    drawn = r.plot()
    assert drawn.shape == before.shape and drawn.dtype == np.uint8
    np.testing.assert_array_equal(r.orig_img, before)
    assert not np.array_equal(drawn[:12, :40], before[:12, :40])  # caption strip top-left
    plain = r.plot(caption=False)
    assert not np.array_equal(drawn, plain)


def test_save_writes_a_readable_image(tmp_path: Path) -> None:
    path = _result().save(tmp_path / "out" / "pic.png")
    assert read_image(path).shape == (100, 200, 3)


def test_caption_and_repr() -> None:
    r = _result()
    assert r.caption == "hard φ=0.73"
    text = repr(r)
    assert "dir/pic.jpg" in text and "2 boxes" in text and "1 bird" in text and "hard φ=0.73" in text
    assert "11.5 ms" in text
    assert "no detections" in repr(_result(route=None, phi=None, n=0))
    assert "easy" in _result(route="easy", phi=None).caption


def test_speed_holds_the_three_stages() -> None:
    r = _result()
    assert r.speed == {"pre": 1.0, "infer": 10.0, "nms": 0.5}


def test_to_json_round_trips_detections_route_and_speed() -> None:
    d = json.loads(_result().to_json())
    assert d["path"] == "dir/pic.jpg" and d["shape"] == [100, 200] and d["frame"] is None
    assert d["route"] == "hard" and d["phi"] == pytest.approx(0.734) and d["speed"]["infer"] == 10.0
    assert [(x["class"], x["name"]) for x in d["detections"]] == [(2, "bird"), (0, "cat")]
    assert d["detections"][0]["box"] == {"x1": 20.0, "y1": 10.0, "x2": 60.0, "y2": 50.0}
    assert d["detections"][1]["score"] == pytest.approx(0.4)
    assert json.loads(_result(n=0, route=None, phi=None).to_json())["detections"] == []


def test_to_df_has_one_row_per_detection() -> None:
    pytest.importorskip("pandas")
    df = _result().to_df()
    assert list(df.columns) == ["class", "name", "score", "x1", "y1", "x2", "y2", "route", "phi"]
    assert df["name"].tolist() == ["bird", "cat"] and df["x2"].tolist() == [60.0, 200.0]
    assert (df["route"] == "hard").all()
    assert len(_result(n=0).to_df()) == 0


def test_to_df_without_pandas_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        _result().to_df()


def test_save_crop_writes_each_box_by_class(tmp_path: Path) -> None:
    r = _result()
    r.orig_img[10:50, 20:60] = (0, 0, 255)  # the first box is red inside
    paths = r.save_crop(tmp_path / "crops")
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["crops/bird/pic.jpg", "crops/cat/pic.jpg"]
    first = read_image(paths[0])
    assert first.shape == (40, 40, 3) and first[..., 2].mean() > 200 and first[..., 0].mean() < 50
    assert read_image(paths[1]).shape == (100, 100, 3)
    twice = Result("v.mp4", r.orig_img, np.array([[0, 0, 10, 10], [5, 5, 30, 30], [0, 0, 0, 5]], np.float32),
                   np.ones(3), np.zeros(3), ["cat"], frame=7)
    names = [p.name for p in twice.save_crop(tmp_path / "v")]
    assert names == ["v_7.jpg", "v_7_1.jpg"]  # the zero-width box is skipped
