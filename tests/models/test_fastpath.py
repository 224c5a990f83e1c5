"""CPU inference fast path: packed oneDNN convolutions, the broadcast CBFuse sum, allocator settings."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from models import fastpath
from models.flops import route_gflops
from models.layers import Conv
from models.link import add_nearest
from models.yolo import build_model
from tests.conftest import randomize_bn

needs_onednn = pytest.mark.skipif(not fastpath.available(), reason="this PyTorch build has no oneDNN fused ops")


def _pair(name: str, nc: int = 3, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(fused, optimised) copies of one randomly initialised model."""
    model = randomize_bn(build_model(name, nc=nc), seed).eval()
    return copy.deepcopy(model).fuse(), model.optimize_for_inference(keep_freed_memory=False)


@pytest.fixture(scope="module")
def dy_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return _pair("dy-yolov7-tiny")


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return _pair("yolov7-tiny")


def _pred(model: torch.nn.Module, x: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    with torch.inference_mode():
        out = model(x, threshold=threshold) if model.is_dynamic else model(x)
    return out.pred if model.is_dynamic else out


@needs_onednn
def test_optimized_plain_model_matches_fused(tiny_pair) -> None:
    fused, fast = tiny_pair
    x = torch.rand(2, 3, 64, 96)
    torch.testing.assert_close(_pred(fast, x), _pred(fused, x), atol=1e-3, rtol=1e-4)


@needs_onednn
@pytest.mark.parametrize("act", ["silu", "leaky", "relu", "identity"])
@pytest.mark.parametrize("stride", [1, 2])
def test_packed_conv_folds_each_activation(act: str, stride: int) -> None:
    layer = randomize_bn(Conv(8, 16, 3, stride, act=act)).eval()
    layer.fuse()
    layer.eval()  # fusion builds a new convolution, in training mode
    x = torch.randn(2, 8, 20, 24)
    with torch.inference_mode():
        ref = layer(x)
        fastpath.prepare(layer.conv, layer.act)
        out = layer(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_optimized_dynamic_routes_match_fused(dy_pair, threshold: float) -> None:
    fused, fast = dy_pair
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(_pred(fast, x, threshold), _pred(fused, x, threshold), atol=1e-3, rtol=1e-4)


@needs_onednn
def test_optimized_mixed_batch_equals_images_alone(dy_pair) -> None:
    fast = copy.deepcopy(dy_pair[1])
    with torch.no_grad():
        fast.router.layer2.weight.mul_(500.0)
    x = torch.rand(4, 3, 64, 64) * torch.tensor([0.2, 1.0, 0.4, 0.8]).view(-1, 1, 1, 1)
    with torch.inference_mode():
        phi = fast.difficulty(x)
        threshold = float(phi.sort().values[1:3].mean())
        out = fast(x, threshold=threshold)
        assert int(out.hard.sum()) == 2
        for i in range(4):
            torch.testing.assert_close(out.pred[i], fast(x[i:i + 1], threshold=threshold).pred[0],
                                       atol=1e-3, rtol=1e-4)


@needs_onednn
def test_state_dict_unchanged_and_copies_work(dy_pair) -> None:
    fused, fast = dy_pair
    x = torch.rand(1, 3, 64, 64)
    ref = _pred(fast, x, 0.0)
    assert fast.state_dict().keys() == fused.state_dict().keys()
    for k, v in fused.state_dict().items():
        assert torch.equal(v, fast.state_dict()[k]), k
    torch.testing.assert_close(_pred(copy.deepcopy(fast), x, 0.0), ref)
    torch.testing.assert_close(_pred(pickle.loads(pickle.dumps(fast)), x, 0.0), ref)


@needs_onednn
def test_changed_weights_are_repacked(tiny_pair) -> None:
    fast = copy.deepcopy(tiny_pair[1])
    x = torch.rand(1, 3, 64, 64)
    _pred(fast, x)  # packs the weights
    other = _pair("yolov7-tiny", seed=5)[0]
    fast.load_state_dict(other.state_dict())
    torch.testing.assert_close(_pred(fast, x), _pred(other, x), atol=1e-3, rtol=1e-4)


@needs_onednn
def test_gradients_and_hooks_use_the_plain_path(tiny_pair) -> None:
    fused, fast = tiny_pair
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    fast(x).sum().backward()  # the packed op has no autograd: this must take the plain path
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert route_gflops(fast, 64) == route_gflops(fused, 64)  # thop's hooks see every convolution


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size,psize", [((40, 48), (40, 48)), ((40, 48), (20, 24)), ((40, 48), (5, 6)),
                                        ((41, 41), (20, 20))])
def test_add_nearest_equals_interpolate(channels_last: bool, size: tuple, psize: tuple) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 4, *size).contiguous(memory_format=fmt)
    p = torch.randn(2, 8, *psize).contiguous(memory_format=fmt)[:, 2:6]  # a channel slice, as CBLinear gives
    ref = x + F.interpolate(p, size=size, mode="nearest")
    assert torch.equal(add_nearest(x, p), ref)
    y = x.clone()
    assert add_nearest(y, p, inplace=True) is y and torch.equal(y, ref)


def test_add_nearest_gradients() -> None:
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    p = torch.randn(1, 2, 2, 2, requires_grad=True)
    out = add_nearest(x * 1.0, p)
    add_nearest(out, p, inplace=True)
    out.sum().backward()
    assert torch.equal(p.grad, torch.full_like(p, 32.0)) and torch.equal(x.grad, torch.ones_like(x))


def test_keep_freed_memory_toggles() -> None:
    ok = fastpath.keep_freed_memory(True)
    assert fastpath.keep_freed_memory(False) == ok
    assert isinstance(ok, bool)


@needs_onednn
def test_packed_weights_are_kept_per_image_shape(tiny_pair) -> None:
    fused, fast = tiny_pair
    conv = fast.model[0].conv
    for shape in ((1, 3, 64, 64), (2, 3, 32, 96), (1, 3, 64, 64), (3, 3, 64, 32)):
        x = torch.rand(shape)
        torch.testing.assert_close(_pred(fast, x), _pred(fused, x), atol=1e-3, rtol=1e-4)
    cache = conv.__dict__["packed"].weights
    assert list(cache) == [(3, 64, 64), (3, 64, 32)]  # the two most recent image shapes
    packed = cache[(3, 64, 64)]
    for batch in (4, 1, 7):  # any batch size reuses the entry: nothing is re-packed
        x = torch.rand(batch, 3, 64, 64)
        torch.testing.assert_close(_pred(fast, x), _pred(fused, x), atol=1e-3, rtol=1e-4)
        assert cache[(3, 64, 64)] is packed and len(cache) == 2


def test_add_nearest_without_broadcast_interpolates() -> None:
    x, p = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)
    ref = x + F.interpolate(p, size=(8, 8), mode="nearest")
    assert torch.equal(add_nearest(x, p, broadcast=False), ref)


@needs_onednn
def test_tracing_an_optimized_model_records_plain_convolutions(tiny_pair) -> None:
    fused, fast = tiny_pair
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(fast, x, check_trace=False)
    graph = str(traced.inlined_graph)
    assert "mkldnn" not in graph and "aten::_convolution" in graph
    torch.testing.assert_close(traced(x), _pred(fused, x), atol=1e-3, rtol=1e-4)
