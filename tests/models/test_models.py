"""Architectures: official parameter layouts, shapes, dynamic routing, fusion, model info."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from models.dynamic import DyModel, DyOutput, DyTrainOutput
from models.route import route_mask
from models.layers import RepConv
from models.parse import load_cfg, read_specs
from models.yolo import Model, build_model
from tests.conftest import REPO, randomize_bn, reference_keys

pytestmark = pytest.mark.long(60)  # the whole file, on 2 cores: scheduled among the first

OFFICIAL = ["yolov7-tiny", "yolov7", "yolov7x", "dy-yolov7", "dy-yolov7x", "dy-yolov7-w6"]


def _key_diff(model: torch.nn.Module, name: str) -> tuple[set, set, list]:
    keys = reference_keys(name)
    sd = model.state_dict()
    missing, unexpected = set(keys) - set(sd), set(sd) - set(keys)
    shapes = [k for k in keys if k in sd and list(sd[k].shape) != keys[k]]
    return missing, unexpected, shapes


@pytest.mark.parametrize("name", OFFICIAL)
def test_parameter_layout_matches_official_checkpoint(name: str) -> None:
    missing, unexpected, shapes = _key_diff(build_model(name), name)
    assert not missing and not unexpected and not shapes, (sorted(missing)[:5], sorted(unexpected)[:5], shapes[:5])


def test_w6_differs_from_official_training_form_only_by_aux_heads() -> None:
    missing, unexpected, shapes = _key_diff(build_model("yolov7-w6"), "yolov7-w6")
    assert not shapes
    aux_layers = {f"model.{i}." for i in range(118, 122)}
    assert all(any(k.startswith(p) for p in aux_layers) or k.startswith("model.122.") for k in missing)
    assert all(k.startswith("model.118.") for k in unexpected)  # our IDetect sits at 118


@pytest.mark.parametrize("name,router_params", [("dy-yolov7", 2_075_041), ("dy-yolov7x", 3_241_801),
                                                ("dy-yolov7-w6", 1_894_753)])
def test_router_size_matches_paper_release(name: str, router_params: int) -> None:
    model = build_model(name)
    assert sum(p.numel() for p in model.router.parameters()) == router_params


def test_plain_forward_shapes() -> None:
    model = build_model("yolov7-tiny", nc=3)
    x = torch.rand(2, 3, 96, 128)
    raw = model.train()(x)
    assert [tuple(p.shape) for p in raw] == [(2, 3, 12, 16, 8), (2, 3, 6, 8, 8), (2, 3, 3, 4, 8)]
    pred = model.eval()(x)
    assert pred.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 8)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


@pytest.fixture(scope="module")
def dy_tiny() -> DyModel:
    torch.manual_seed(1)
    model = randomize_bn(build_model("dy-yolov7-tiny", nc=4)).eval()
    with torch.no_grad():  # spread φ over (0, 1) so thresholds split a batch
        model.router.layer2.weight.mul_(200.0)
    return model


def test_dynamic_training_runs_both_detectors(dy_tiny: DyModel) -> None:
    out = dy_tiny.train()(torch.rand(3, 3, 64, 64))
    dy_tiny.eval()
    assert isinstance(out, DyTrainOutput)
    assert len(out.p1) == len(out.p2) == 3 and out.p1[0].shape == out.p2[0].shape == (3, 3, 8, 8, 9)
    assert out.phi.shape == (3,) and torch.all((out.phi > 0) & (out.phi < 1))
    out.p2[0].sum().backward()  # detector 2 depends on backbone 1 through the composite link
    assert dy_tiny.model_b[0].conv.weight.grad is not None
    dy_tiny.zero_grad(set_to_none=True)


def test_mixed_batch_equals_images_run_alone(dy_tiny: DyModel) -> None:
    x = torch.rand(6, 3, 64, 96)
    with torch.no_grad():
        phi = dy_tiny.difficulty(x)
        s = phi.sort().values
        threshold = float(s[2] + s[3]) / 2  # half the batch on each route, away from any φ
        out = dy_tiny(x, threshold=threshold)
        both = dy_tiny.forward_both(x)
    assert isinstance(out, DyOutput)
    assert 0 < int(out.hard.sum()) < 6, "test needs a batch with both routes"
    torch.testing.assert_close(out.phi, phi)
    for i in range(6):
        with torch.no_grad():
            alone = dy_tiny(x[i:i + 1], threshold=threshold)
        assert bool(alone.hard[0]) == bool(out.hard[i])
        torch.testing.assert_close(out.pred[i], alone.pred[0], atol=1e-4, rtol=1e-4)
        expected = both.pred2[i] if out.hard[i] else both.pred1[i]
        torch.testing.assert_close(out.pred[i], expected, atol=1e-4, rtol=1e-4)


def test_threshold_extremes_and_attribute(dy_tiny: DyModel) -> None:
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        assert dy_tiny(x, threshold=0.0).hard.all()
        assert not dy_tiny(x, threshold=1.0).hard.any()
        dy_tiny.threshold = -0.5
        assert dy_tiny(x).hard.all()
        dy_tiny.threshold = 0.5
    phi = torch.tensor([0.0, 0.3, 0.7, 1.0])
    assert route_mask(phi, 0.5).tolist() == [False, False, True, True]
    assert route_mask(phi, 0.0).all() and not route_mask(phi, 1.0).any()


@pytest.mark.parametrize("name,size", [("yolov7-tiny", 96), ("yolov7", 64), ("dy-yolov7-tiny", 96)])
def test_fused_equals_unfused(name: str, size: int) -> None:
    model = randomize_bn(build_model(name, nc=5)).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        ref = model(x, threshold=0.0) if model.is_dynamic else model(x)
        model.fuse()
        out = model(x, threshold=0.0) if model.is_dynamic else model(x)
    if model.is_dynamic:
        ref, out = ref.pred, out.pred
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert (ref - out).abs().max().item() < 1e-3


def test_fused_dynamic_easy_route() -> None:
    model = randomize_bn(build_model("dy-yolov7-tiny", nc=2)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, threshold=1.0)
        model.fuse()
        out = model(x, threshold=1.0)
    assert (ref.pred - out.pred).abs().max().item() < 1e-3
    torch.testing.assert_close(ref.phi, out.phi)


def test_repconv_identity_branch_fuses() -> None:
    layer = randomize_bn(RepConv(8, 8, 3, 1)).eval()
    assert layer.rbr_identity is not None
    x = torch.rand(2, 8, 10, 10)
    with torch.no_grad():
        ref = layer(x)
        layer.fuse()
        assert layer.rbr_dense is None and layer.rbr_identity is None
        torch.testing.assert_close(layer(x), ref, atol=1e-4, rtol=1e-4)


def test_w6_shares_stem_and_links_backbones() -> None:
    model = build_model("dy-yolov7-w6")
    assert 0 not in model.b2_index and model.b2_index[1] == 5  # 5 CBLinear blocks come first
    assert sum(type(m).__name__ == "CBFuse" for m in model.model_b2) == 5


def test_config_errors_are_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="built-in configs"):
        build_model("no-such-model")
    cfg = load_cfg("yolov7-tiny")
    cfg["backbone"][3] = [-2, 1, "NoSuchLayer", [32]]
    with pytest.raises(KeyError, match="unknown layer type 'NoSuchLayer'"):
        build_model(cfg)
    cfg = load_cfg("yolov7-tiny")
    cfg["backbone"][3] = [5, 1, "Conv", [32, 1, 1]]
    with pytest.raises(ValueError, match="does not refer to an earlier layer"):
        read_specs(cfg)
    dy = load_cfg("dy-yolov7-tiny")
    dy["dynamic"]["link"]["sources"] = [7, 14, 99, 28]
    with pytest.raises(ValueError, match="link.sources"):
        build_model(dy)


def test_nc_override_and_names() -> None:
    model = build_model("yolov7-tiny", names=["a", "b"])
    assert isinstance(model, Model) and model.nc == 2 and model.names == ["a", "b"]
    assert model.heads[0].m[0].out_channels == 3 * 7


def test_info_cli_json() -> None:
    out = subprocess.run([sys.executable, "models/yolo.py", "--cfg", "dy-yolov7-tiny", "--img-size", "128", "--json"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert set(info) == {"params", "gflops", "router_gflops", "router_params"}
    assert 0 < info["gflops"]["easy"] < info["gflops"]["hard"]
    assert 0 < info["router_gflops"] < 0.01 * info["gflops"]["easy"]
    plain = subprocess.run([sys.executable, "models/yolo.py", "--cfg", "yolov7-tiny", "--img-size", "128"],
                           cwd=REPO, capture_output=True, text=True, check=True)
    assert "GFLOPs" in plain.stdout
    bad = subprocess.run([sys.executable, "models/yolo.py", "--cfg", "nope"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "not found" in bad.stderr


REFERENCE_GFLOPS = [
    ("dy-yolov7", 640, {"easy": 104.5, "hard": 181.7}),
    ("dy-yolov7x", 640, {"easy": 189.7, "hard": 307.6}),
    ("dy-yolov7-w6", 1280, {"easy": 359.7, "hard": 601.7}),
    ("yolov7", 640, {"all": 104.5}),
    ("yolov7x", 640, {"all": 189.7}),
    ("yolov7-tiny", 640, {"all": 13.7}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,expected", REFERENCE_GFLOPS)
def test_gflops_match_official_architectures(name: str, size: int, expected: dict) -> None:
    from models.flops import route_gflops
    got = route_gflops(build_model(name), size)
    assert set(got) == set(expected)
    for route, ref in expected.items():
        assert abs(got[route] - ref) / ref < 0.01, (route, got[route], ref)
