"""Python API: DyDet.predict on arrays, PIL images, paths, folders and videos; routing control."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dydet import DyDet
from tests.conftest import tiny_checkpoint, write_video
from utils.routing.calibration import calibration_record

KW = {"img_size": 64, "conf_thres": 0.0, "max_det": 5}  # a random model: keep every box, few of them


@pytest.fixture(scope="module")
def dy(tmp_path_factory: pytest.TempPathFactory) -> DyDet:
    calib = calibration_record(np.linspace(0.05, 0.95, 19))
    return DyDet(tiny_checkpoint(tmp_path_factory.mktemp("w") / "dy.pt", thresholds=calib), device="cpu")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(2)]


def test_model_properties(dy: DyDet) -> None:
    assert dy.names == ["a", "b", "c"] and dy.is_dynamic and dy.threshold == 0.5
    assert dy.calibration["table"] and "dynamic" in repr(dy)


def test_predict_arrays(dy: DyDet, images: list[np.ndarray]) -> None:
    results = dy.predict(images, **KW)
    assert len(results) == 2
    for r, img in zip(results, images):
        assert r.orig_img.shape == img.shape and 0 < len(r) <= 5
        assert r.route in ("easy", "hard") and 0 <= r.phi <= 1
        assert (r.boxes[:, [0, 2]] <= 80).all() and (r.boxes[:, [1, 3]] <= 48).all() and (r.boxes >= 0).all()
        assert set(r.speed) == {"pre", "infer", "nms"}
    single = dy.predict(images[0], **KW)
    np.testing.assert_allclose(single[0].boxes, results[0].boxes, atol=1e-3)


def test_paths_and_pil_give_the_same_boxes(dy: DyDet, images: list[np.ndarray], tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), images[0])
    from_array = dy.predict(images[0], **KW)[0]
    from_path = dy.predict(tmp_path / "a.png", **KW)[0]
    from_pil = dy.predict(Image.fromarray(images[0][..., ::-1]), **KW)[0]
    assert from_path.path == str(tmp_path / "a.png") and from_array.path == "image0"
    for r in (from_path, from_pil):
        np.testing.assert_allclose(r.boxes, from_array.boxes, atol=1e-3)
        assert r.phi == pytest.approx(from_array.phi, abs=1e-5)


def test_batches_match_single_images(dy: DyDet, images: list[np.ndarray]) -> None:
    one = dy.predict(images, batch_size=1, **KW)
    two = dy.predict(images, batch_size=2, **KW)
    for a, b in zip(one, two):  # random weights give near-ties, so compare scores, not box order
        np.testing.assert_allclose(np.sort(a.scores), np.sort(b.scores), rtol=1e-3)
        assert a.route == b.route and a.phi == pytest.approx(b.phi, abs=1e-5)


def test_dy_thres_forces_the_route_for_one_call(dy: DyDet, images: list[np.ndarray]) -> None:
    assert {r.route for r in dy.predict(images, dy_thres=0, **KW)} == {"hard"}
    assert {r.route for r in dy.predict(images, dy_thres="1", **KW)} == {"easy"}
    assert dy.threshold == 0.5


def test_threshold_setter(dy: DyDet, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        dy.threshold = 1.0
        assert dy.threshold == 1.0
        dy.threshold = "p50"  # from the calibration table: half of 0.05..0.95 above it
        assert dy.threshold == pytest.approx(0.5, abs=0.03)
        monkeypatch.setitem(dy.info, "thresholds", {})
        with pytest.raises(ValueError, match="no routing calibration"):
            dy.threshold = "p30"
        with pytest.raises(ValueError, match="not understood"):
            dy.threshold = "fast"
    finally:
        dy.threshold = 0.5


def test_threshold_for_a_gflops_target(dy: DyDet) -> None:
    try:  # routes measured at 64 px: about 0.13 (easy) and 0.21 (hard) GFLOPs
        how = dy.set_threshold(target_gflops=0.17, img_size=64)
        assert "GFLOPs" in how and dy.threshold == pytest.approx(0.5, abs=0.1)
    finally:
        dy.threshold = 0.5


def test_classes_filter(dy: DyDet, images: list[np.ndarray]) -> None:
    results = dy.predict(images, classes=[1], **KW)
    assert all(len(r) and set(r.classes.tolist()) == {1} for r in results)


def test_video_and_folder(dy: DyDet, tmp_path: Path, images: list[np.ndarray]) -> None:
    write_video(tmp_path / "clip.avi", n_frames=2)
    cv2.imwrite(str(tmp_path / "b.jpg"), images[1])
    results = dy.predict(tmp_path, **KW)
    assert [(Path(r.path).name, r.frame) for r in results] == [("b.jpg", None), ("clip.avi", 0), ("clip.avi", 1)]
    assert results[1].fps == pytest.approx(10)


def test_plain_model(tmp_path: Path, images: list[np.ndarray]) -> None:
    model = DyDet(tiny_checkpoint(tmp_path / "plain.pt", cfg="yolov7-tiny", nc=2), device="cpu")
    assert not model.is_dynamic and model.threshold is None and model.names == ["a", "b"]
    model.threshold = 0.3  # ignored, with a warning
    (r,) = model.predict(images[0], dy_thres=0.2, **KW)
    assert r.route is None and r.phi is None and r.caption is None and len(r) > 0
    assert model.set_threshold() == "plain model (no routing)"


def test_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DyDet(tmp_path / "none.pt")


def test_onnx_export_predicts_like_the_checkpoint(tmp_path: Path) -> None:
    import export
    rng = np.random.default_rng(2)  # square: the export's fixed 64x64 input equals the PyTorch input
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    calib = calibration_record(np.linspace(0.05, 0.95, 19))
    pt = tiny_checkpoint(tmp_path / "dy.pt", thresholds=calib)
    onnx_path = export.run(weights=pt, img_size=64, output=tmp_path / "dy.onnx")["onnx"]
    torch_model, ort_model = DyDet(pt, device="cpu"), DyDet(onnx_path, device="cpu")
    assert ort_model.names == torch_model.names and ort_model.is_dynamic
    for thr, route in ((1.0, "easy"), (0.0, "hard")):
        a = torch_model.predict(images, dy_thres=thr, **{**KW, "max_det": 3})
        b = ort_model.predict(images, dy_thres=thr, **{**KW, "max_det": 3})
        for ra, rb in zip(a, b):
            assert ra.route == rb.route == route and rb.phi == pytest.approx(ra.phi, abs=1e-4)
            np.testing.assert_allclose(rb.boxes, ra.boxes, atol=1e-2)
            np.testing.assert_allclose(rb.scores, ra.scores, atol=1e-4)
