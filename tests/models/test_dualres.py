"""DualRes: resize, resolution router, and the wrapper model (routing, geometry, frozen detector, I/O)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.dualres import DualResModel, low_side
from models.flops import route_gflops, router_gflops
from models.resize import prefilter_factor, resize
from models.resolution_router import ROUTER_KINDS, ResolutionRouter
from models.yolo import build_model
from utils.inference.predictor import Predictor
from utils.weights.checkpoints import check_plain, load_checkpoint, save_checkpoint

IMG = 128


def spread_router(kind: str = "thumb", input_size: int = 64, seed: int = 0) -> ResolutionRouter:
    """A router whose φ differ clearly between images (fresh ones give φ ≈ 0.5 for all)."""
    torch.manual_seed(seed)
    router = ResolutionRouter(kind, input_size)
    nn.init.normal_(router.fc.weight, std=2.0)
    return router


@pytest.fixture(scope="module")
def plain() -> DualResModel:
    torch.manual_seed(0)
    return DualResModel(build_model("yolov7-tiny", nc=4), spread_router()).eval()


@pytest.fixture(scope="module")
def dy() -> DualResModel:
    torch.manual_seed(0)
    return DualResModel(build_model("dy-yolov7-tiny", nc=4), spread_router(), inner_threshold=0.0).eval()


def images(n: int = 4, hw: tuple[int, int] = (IMG, IMG), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *hw, generator=g) * torch.linspace(0.2, 1.0, n).view(n, 1, 1, 1)


def mixed_threshold(model: DualResModel, x: torch.Tensor) -> float:
    """A threshold between the 2nd and 3rd smallest φ: two images low, the rest high."""
    with torch.no_grad():
        phi = model.difficulty(x).sort().values
    assert phi[2] - phi[1] > 1e-4, "test images need distinct φ"
    return float(phi[1] + phi[2]) / 2


# ---- resize ------------------------------------------------------------------------------
def test_resize_by_two_is_plain_bilinear_and_by_four_the_block_average() -> None:
    x = images(2)
    torch.testing.assert_close(resize(x, (64, 64)), F.interpolate(x, size=(64, 64), mode="bilinear",
                                                                  align_corners=False))
    torch.testing.assert_close(resize(x, (32, 32)), F.avg_pool2d(x, 4))
    assert resize(x, (IMG, IMG)) is x
    assert resize(x, (48, 80)).shape == (2, 3, 48, 80)
    assert prefilter_factor((1280, 1280), (224, 224)) == 5 and prefilter_factor((480, 640), (128, 128)) == 2


# ---- router ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ROUTER_KINDS)
def test_router_kinds_score_any_input_size(kind: str) -> None:
    router = ResolutionRouter(kind, 64).eval()
    with torch.no_grad():
        for hw in ((IMG, IMG), (96, 160)):
            phi = router(images(3, hw))
            assert phi.shape == (3,) and bool(((phi > 0) & (phi < 1)).all())
    assert router.thumbnail(images(2, (96, 160))).shape == (2, 3, 64, 64)
    rebuilt = ResolutionRouter(**router.cfg)
    assert rebuilt.state_dict().keys() == router.state_dict().keys()


def test_router_thumbnail_of_an_image_at_its_input_size_is_the_image() -> None:
    router = ResolutionRouter("thumb", IMG)
    x = images(2)
    assert torch.equal(router.thumbnail(x), x)


def test_router_loads_torchvision_backbone_state_dicts(tmp_path) -> None:
    from torchvision.models import mobilenet_v3_small
    torch.manual_seed(3)
    net = mobilenet_v3_small(weights=None)
    torch.save(net.state_dict(), tmp_path / "cls.pth")  # features.* + classifier.*
    frcnn = {f"backbone.body.{k}": v for k, v in net.features.state_dict().items() if "num_batches" not in k}
    frcnn["rpn.head.conv.0.0.weight"] = torch.zeros(1)
    torch.save(frcnn, tmp_path / "frcnn.pth")  # Faster R-CNN layout, frozen BN (no counters)
    for name in ("cls.pth", "frcnn.pth"):
        router = ResolutionRouter("mobilenet_v3_small", 64, backbone_weights=tmp_path / name)
        for k, v in net.features.state_dict().items():
            assert torch.equal(router.features.state_dict()[k], v), k
    torch.save({"0.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not match"):
        ResolutionRouter("mobilenet_v3_small", 64, backbone_weights=tmp_path / "bad.pth")


def test_router_fuse_keeps_scores() -> None:
    router = spread_router("mobilenet_v3_small").eval()
    x = images(3)
    with torch.no_grad():
        before = router(x)
        router.fuse()
        torch.testing.assert_close(router(x), before, rtol=1e-4, atol=1e-5)


# ---- geometry ----------------------------------------------------------------------------
def test_low_size_is_scaled_and_a_multiple_of_the_stride(plain: DualResModel) -> None:
    assert plain.low_size((IMG, IMG)) == (64, 64)
    assert plain.low_size((96, 160)) == (64, 96)  # 48 -> 64 (half up), 80 -> 96
    assert low_side(640, 0.5, 32) == 320 and low_side(40, 0.25, 32) == 32
    with pytest.raises(ValueError, match="multiples of the stride"):
        plain(torch.rand(1, 3, 100, IMG))


class BrightBox(nn.Module):
    """A 'detector' whose decoded output is known: row 0 = box around the pixels brighter than 0.5."""

    is_dynamic = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("s", torch.tensor([8.0, 16.0, 32.0]))
        self.names, self.nc, self.cfg, self.fused = ["box"], 1, {"nc": 1, "name": "bright-box"}, False

    @property
    def stride(self) -> torch.Tensor:
        return self.s

    @property
    def heads(self) -> tuple:
        return (SimpleNamespace(na=1, stride=self.s),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = x.new_zeros(x.shape[0], sum(int(h // s) * int(w // s) for s in self.s.tolist()), 6)
        for i, img in enumerate(x):
            ys, xs = (img.mean(0) > 0.5).nonzero(as_tuple=True)
            x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            out[i, 0] = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, x.new_tensor(1.0),
                                     x.new_tensor(1.0)])
        return out


def test_low_route_boxes_come_back_in_input_pixels() -> None:
    model = DualResModel(BrightBox(), ResolutionRouter("thumb", 32)).eval()
    for hw, box in (((IMG, IMG), (32, 64, 40, 88)), ((96, IMG), (32, 64, 24, 48))):  # x1, x2, y1, y2
        x = torch.zeros(1, 3, *hw)
        x[..., box[2]:box[3], box[0]:box[1]] = 1.0
        want = torch.tensor([(box[0] + box[1]) / 2, (box[2] + box[3]) / 2, box[1] - box[0], box[3] - box[2]])
        low, high = model.low(x), model.high(x)
        torch.testing.assert_close(high[0, 0, :4], want)
        torch.testing.assert_close(low[0, 0, :4], want, atol=1.6, rtol=0)  # one low-res pixel (x1.5 at 96 -> 64)
        assert low.shape == high.shape


def test_low_route_is_the_detector_on_the_downsampled_image_scaled_and_padded(plain: DualResModel) -> None:
    x = images(2)
    with torch.no_grad():
        low = plain(x, threshold=1.0)
        ref = plain.detector(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
        full = plain.detector(x)
    assert not low.hard.any() and low.pred.shape == full.shape
    n = ref.shape[1]
    torch.testing.assert_close(low.pred[:, :n, :4], ref[..., :4] * 2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(low.pred[:, :n, 4:], ref[..., 4:], rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(low.pred[:, n:]) == 0  # padding rows: objectness (and all) zero
    routed = Predictor(plain, conf_thres=0.001)(x.mul(255).round().byte(), threshold=1.0)
    assert len(routed.dets) == 2 and not routed.hard.any()


def test_high_route_is_the_detector_on_the_input(plain: DualResModel, dy: DualResModel) -> None:
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, threshold=0.0).pred, plain.detector(x))
        torch.testing.assert_close(dy(x, threshold=0.0).pred, dy.detector(x, threshold=0.0).pred)
        inner1 = DualResModel(dy.detector, dy.router, inner_threshold=1.0).eval()
        torch.testing.assert_close(inner1.high(x), dy.detector(x, threshold=1.0).pred)


# ---- routing -----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["plain", "dy"])
def test_mixed_batch_equals_each_image_alone(which: str, request) -> None:
    model = request.getfixturevalue(which)
    x = images(4)
    thr = mixed_threshold(model, x)
    with torch.no_grad():
        out = model(x, threshold=thr)
        assert 0 < int(out.hard.sum()) < 4
        for i in range(4):
            alone = model(x[i:i + 1], threshold=thr)
            assert bool(alone.hard[0] == out.hard[i])
            torch.testing.assert_close(out.pred[i:i + 1], alone.pred, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out.phi[i:i + 1], alone.phi, rtol=1e-5, atol=1e-6)
        both = model.forward_both(x)
        want = torch.where(out.hard.view(-1, 1, 1), both.pred2, both.pred1)
        torch.testing.assert_close(out.pred, want, rtol=1e-4, atol=1e-4)


def test_route_mask_semantics(plain: DualResModel) -> None:
    x = images(3)
    with torch.no_grad():
        assert plain(x, threshold=0.0).hard.all() and not plain(x, threshold=1.0).hard.any()
        phi = plain.difficulty(x)
        assert torch.equal(plain(x).hard, phi > plain.threshold)


# ---- frozen detector, costs, checkpoints -----------------------------------------------
def test_detector_stays_frozen_in_train_mode(dy: DualResModel) -> None:
    dy.train()
    try:
        assert dy.training and dy.router.training and not dy.detector.training
        assert not any(m.training for m in dy.detector.modules())
        assert not any(p.requires_grad for p in dy.detector.parameters())
        assert all(p.requires_grad for p in dy.router.parameters())
    finally:
        dy.eval()


def test_route_gflops_include_the_router(plain: DualResModel) -> None:
    g = route_gflops(plain, IMG)
    router = router_gflops(plain, IMG)
    assert router > 0
    det_high = route_gflops(plain.detector, IMG)["all"]
    det_low = route_gflops(plain.detector, 64)["all"]
    assert g["easy"] < g["hard"]
    assert g["hard"] == pytest.approx(det_high + router, rel=0.02)
    assert g["easy"] == pytest.approx(det_low + router, rel=0.02)


def test_checkpoint_round_trip(dy: DualResModel, tmp_path) -> None:
    check_plain(dy.cfg, "cfg")
    path = save_checkpoint(tmp_path / "dr.pt", dy, names=dy.names, img_size=IMG,
                           thresholds={"table": {0: 1.0, 100: 0.0}})
    model, info = load_checkpoint(path)  # build_model dispatches on the cfg's "dualres" section
    model.eval()
    assert isinstance(model, DualResModel) and model.inner_threshold == 0.0
    assert model.cfg == dy.cfg and info["thresholds"]["table"][100] == 0.0 and info["img_size"] == IMG
    x = images(2)
    with torch.no_grad():
        thr = mixed_threshold(dy, images(4))
        torch.testing.assert_close(model(x, threshold=thr).pred, dy(x, threshold=thr).pred)
