"""A broken ``--weights`` file stops every script with one ``error:`` line naming the file, exit code 1.

Kinds of file (each made from a valid one of its format where there is one): our dydet-v1
checkpoint, an official-layout .pt (a dict with a ``model`` state_dict), an .onnx and an OpenVINO
IR (.xml, and a ``*_openvino/`` folder); faults: truncated, zero bytes, random bytes, a text file
and a JPEG under that name.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import benchmark
import detect
import export
import test as test_script
import train
import train_router
from data.make_demo_data import make_demo_dataset
from models.yolo import build_model
from tests.conftest import REPO
from utils.weights.checkpoints import save_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.long(25)]  # long: the whole file, on 2 cores

KINDS = ("ours", "official", "onnx", "openvino_xml", "openvino_dir")
FAULTS = ("truncated", "zero", "random", "text", "jpeg")


def _valid_bytes(kind: str, root: Path) -> bytes:
    """The bytes of a valid file of ``kind`` (IR: an XML header only; the faults replace it anyway)."""
    if kind in ("ours", "official"):
        model = build_model("dy-yolov7-tiny", names=["a", "b"])
        path = root / f"valid-{kind}.pt"
        if kind == "ours":
            save_checkpoint(path, model, names=model.names)
        else:
            torch.save({"model": model.state_dict(), "epoch": -1}, path)
        return path.read_bytes()
    if kind == "onnx":
        model = build_model("yolov7-tiny", names=["a"]).eval()
        path = root / "valid.onnx"
        torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(path), opset_version=12, dynamo=False)
        return path.read_bytes()
    return b'<?xml version="1.0"?>\n<net name="model" version="11">\n<layers>\n' + b"<layer/>" * 200


def _fault(data: bytes, fault: str) -> bytes:
    if fault == "truncated":
        return data[: len(data) // 2]
    if fault == "zero":
        return b""
    if fault == "random":
        return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if fault == "text":
        return b"this is not a model\n" * 10
    ok, jpg = cv2.imencode(".jpg", np.full((32, 32, 3), 127, np.uint8))
    assert ok
    return jpg.tobytes()


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("valid")
    return {kind: _valid_bytes(kind, root) for kind in KINDS}


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_train=2, n_val=2, img_size=64, seed=0)


def bad_file(kind: str, fault: str, valid: dict[str, bytes], root: Path) -> Path:
    """Write the faulty file; returns what is passed as --weights."""
    data = _fault(valid[kind], fault)
    if kind == "openvino_dir":
        folder = root / "model_openvino"
        folder.mkdir()
        (folder / "model.xml").write_bytes(data)
        (folder / "model.bin").write_bytes(b"")
        return folder
    suffix = {"ours": ".pt", "official": ".pt", "onnx": ".onnx", "openvino_xml": ".xml"}[kind]
    path = root / f"bad-{kind}-{fault}{suffix}"
    path.write_bytes(data)
    if kind == "openvino_xml":
        path.with_suffix(".bin").write_bytes(b"\0" * 16)
    return path


def _argv(script: str, weights: Path, data: Path, out: Path) -> list[str]:
    common = ["--weights", str(weights), "--device", "cpu"]
    return {
        "detect": [*common, "--source", str(REPO / "data" / "images"), "--project", str(out), "--img-size", "64"],
        "test": [*common, "--data", str(data), "--project", str(out), "--img-size", "64"],
        "export": [*common, "--img-size", "64"],
        "train": [*common, "--data", str(data), "--cfg", "dy-yolov7-tiny", "--epochs", "1", "--img-size", "64",
                  "--project", str(out)],
        "train_router": [*common, "--data", str(data), "--epochs", "1", "--img-size", "64", "--project", str(out)],
    }[script]


MAINS: dict[str, Callable[[list[str]], int]] = {
    "detect": detect.main, "test": test_script.main, "export": export.main,
    "train": train.main, "train_router": train_router.main,
}


# Library internals that must not reach the user (wrapped into "<file>: not a ... (<what it holds>)").
RAW = ("miniz", "pickle", "ONNXRuntimeError", "protobuf parsing", "src/", "Exception from", "pop from")


def assert_one_error_line(stderr: str, weights: Path) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert weights.name in errors[0], errors[0]
    assert not [raw for raw in RAW if raw.lower() in errors[0].lower()], errors[0]
    assert len(errors[0].replace(str(weights.parent), "<dir>")) < 300, errors[0]  # short, however deep the folder


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("script", sorted(MAINS))
def test_bad_weights_one_error_line(script: str, kind: str, fault: str, valid: dict[str, bytes], data_yaml: Path,
                                    tmp_path: Path, capsys) -> None:
    weights = bad_file(kind, fault, valid, tmp_path)
    capsys.readouterr()
    code = MAINS[script](_argv(script, weights, data_yaml, tmp_path / "runs"))
    assert code == 1
    assert_one_error_line(capsys.readouterr().err, weights)


@pytest.mark.parametrize("kind", ["ours", "onnx"])
@pytest.mark.parametrize("script", ["detect", "export"])
def test_bad_weights_subprocess(script: str, kind: str, valid: dict[str, bytes], data_yaml: Path,
                                tmp_path: Path) -> None:
    weights = bad_file(kind, "truncated", valid, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, f"{script}.py", *_argv(script, weights, data_yaml, tmp_path / "runs")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert_one_error_line(proc.stderr, weights)


def test_benchmark_takes_no_weights() -> None:
    """benchmark.py builds its models from --cfg: there is no --weights to break."""
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--weights", "x.pt"])
