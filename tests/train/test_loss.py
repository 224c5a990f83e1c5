"""Tests for utils/train/loss.py: assignment, loss values, reductions and the multi-head wrapper."""
from __future__ import annotations

import inspect
from typing import NamedTuple, Sequence

import pytest
import torch
import torch.nn as nn
from torchvision.ops import complete_box_iou_loss

import utils.train.loss as loss_mod
from utils.boxes import xywh2xyxy
from utils.train.loss import (
    ComputeLoss,
    DetectionLoss,
    bbox_ciou,
    find_candidates,
    level_balance,
    scale_loss_gains,
    simota_match,
)

ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
HYP = {"box": 0.05, "obj": 0.7, "cls": 0.3, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0,
       "fl_gamma": 0.0, "loss_ota": 1}
IMG = 128


class FakeHead(nn.Module):
    """Just the attributes and buffers the loss reads from an IDetect head."""

    def __init__(self, nc: int = 4, anchors: Sequence[Sequence[float]] = ANCHORS,
                 strides: Sequence[float] = (8, 16, 32)) -> None:
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        stride = torch.tensor(strides, dtype=torch.float32)
        self.register_buffer("stride", stride)
        pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", pixels / stride.view(-1, 1, 1))


class FakeModel(nn.Module):
    def __init__(self, *heads: nn.Module) -> None:
        super().__init__()
        self.det = nn.ModuleList(heads)

    @property
    def heads(self) -> tuple[nn.Module, ...]:
        return tuple(self.det)


class DyOut(NamedTuple):
    p1: list
    p2: list
    phi: torch.Tensor


def make_preds(head: FakeHead, bs: int, img: int = IMG, seed: int = 0,
               grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in head.stride.tolist():
        n = img // int(s)
        out.append(torch.randn(bs, head.na, n, n, head.no, generator=g).requires_grad_(grad))
    return out


def make_targets(bs: int, per_image: int = 3, nc: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(bs):
        for _ in range(per_image):
            cls = torch.randint(0, nc, (1,), generator=g).float()
            wh = torch.rand(2, generator=g) * 0.5 + 0.05
            xy = wh / 2 + torch.rand(2, generator=g) * (1 - wh)
            rows.append(torch.cat((torch.tensor([float(b)]), cls, xy, wh)))
    return torch.stack(rows)


def imgs(bs: int, img: int = IMG) -> torch.Tensor:
    return torch.zeros(bs, 3, img, img)


# ----------------------------------------------------------------------------- helpers
def test_scale_loss_gains_reference_and_copy():
    same = scale_loss_gains(HYP, nl=3, nc=80, img_size=640)
    assert same["box"] == pytest.approx(0.05) and same["obj"] == pytest.approx(0.7)
    assert same["cls"] == pytest.approx(0.3)
    out = scale_loss_gains(HYP, nl=4, nc=20, img_size=1280)
    assert out["box"] == pytest.approx(0.05 * 3 / 4)
    assert out["cls"] == pytest.approx(0.3 * 20 / 80 * 3 / 4)
    assert out["obj"] == pytest.approx(0.7 * 4 * 3 / 4)
    assert HYP["box"] == 0.05  # input untouched


def test_level_balance():
    assert level_balance(3) == [4.0, 1.0, 0.4]
    assert level_balance(4) == [4.0, 1.0, 0.25, 0.06]
    assert level_balance(5) == [4.0, 1.0, 0.25, 0.06, 0.02]
    assert len(level_balance(6)) == 6


def test_bbox_ciou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.cat((torch.rand(50, 2, generator=g) * 10, torch.rand(50, 2, generator=g) * 5), 1)
            for _ in range(2))
    a[:, 2:] += 0.5
    b[:, 2:] += 0.5
    ref = 1 - complete_box_iou_loss(xywh2xyxy(a), xywh2xyxy(b))
    torch.testing.assert_close(bbox_ciou(a, b), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bbox_ciou(a, a), torch.ones(50), atol=1e-5, rtol=0)
    assert torch.isfinite(bbox_ciou(a[:1], torch.tensor([[1.0, 1.0, 0.0, 0.0]]))).all()


def test_find_candidates_centre_and_two_neighbours():
    # one box at grid (5.3, 6.8) on a 10x10 grid, matching anchor 0 only
    t = torch.tensor([[0, 0, 0.53, 0.68, 0.2, 0.2]])
    anchors = torch.tensor([[2.0, 2.0], [20.0, 20.0]])
    a, gj, gi, ti = find_candidates(t, anchors, (10, 10), anchor_t=4.0)
    cells = set(zip(gj.tolist(), gi.tolist()))
    assert a.tolist() == [0, 0, 0] and ti.tolist() == [0, 0, 0]
    assert cells == {(6, 5), (6, 4), (7, 5)}  # centre, left (x frac < .5), down (y frac > .5)


def test_find_candidates_border_and_size_filter():
    t = torch.tensor([[0, 0, 0.02, 0.02, 0.1, 0.1], [0, 0, 0.5, 0.5, 0.0, 0.0]])
    a, gj, gi, ti = find_candidates(t, torch.tensor([[1.0, 1.0]]), (10, 10), anchor_t=4.0)
    assert ti.tolist() == [0] and gj.tolist() == [0] and gi.tolist() == [0]


def test_simota_match_dynamic_k_and_conflicts():
    iou = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.0, 0.85, 0.1, 0.0]])
    cost = -torch.log(iou + 1e-8)
    fg, gt = simota_match(cost, iou)
    # box 0: k = int(2.5) = 2 -> cols 0,1; box 1: k = 1 -> col 1 (conflict, box 1 cheaper)
    assert fg.tolist() == [True, True, False, False]
    assert gt.tolist() == [0, 1]


# ----------------------------------------------------------------------------- loss values
def test_loss_finite_positive_and_items():
    head = FakeHead()
    crit = DetectionLoss(head, HYP)
    loss, items = crit(make_preds(head, 4), make_targets(4), imgs(4))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert items.shape == (4,) and not items.requires_grad
    assert (items[:3] > 0).all()
    torch.testing.assert_close(items[:3].sum(), items[3])
    torch.testing.assert_close(loss, items[3] * 4)


def test_gradient_flows_to_all_levels():
    head = FakeHead()
    preds = make_preds(head, 2, grad=True)
    loss, _ = DetectionLoss(head, HYP)(preds, make_targets(2, per_image=6), imgs(2))
    loss.backward()
    for p in preds:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert preds[0].grad[..., :4].abs().sum() > 0  # box terms reach xywh logits


def test_zero_targets_only_objectness():
    head = FakeHead()
    preds = make_preds(head, 3, grad=True)
    crit = DetectionLoss(head, HYP)
    loss, items = crit(preds, torch.zeros(0, 6), imgs(3))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    loss.backward()
    assert preds[1].grad[..., 4].abs().sum() > 0
    per_image = crit(preds, torch.zeros(0, 6), imgs(3), reduction="none")
    assert per_image.shape == (3,) and (per_image > 0).all()


def test_targets_in_distinct_images_only():
    head = FakeHead()
    bs = 6
    t = make_targets(3, per_image=1)
    t[:, 0] = torch.tensor([0.0, 2.0, 5.0])
    crit = DetectionLoss(head, HYP)
    preds = make_preds(head, bs)
    pos = crit.assign(preds, t, (IMG, IMG))
    seen = torch.cat([p.b for p in pos]).unique().tolist()
    assert seen == [0, 2, 5]
    for p in pos:  # each positive is assigned to a target of its own image
        assert (t[p.t, 0].long() == p.b).all()
    per_image = crit(preds, t, imgs(bs), reduction="none")
    assert torch.isfinite(per_image).all()
    obj_only = crit(preds, torch.zeros(0, 6), imgs(bs), reduction="none")
    empty = [1, 3, 4]
    torch.testing.assert_close(per_image[empty], obj_only[empty])


def test_ota_positives_are_unique_cells():
    head = FakeHead()
    crit = DetectionLoss(head, HYP)
    t = make_targets(2, per_image=8)
    for p in crit.assign(make_preds(head, 2), t, (IMG, IMG)):
        keys = torch.stack((p.b, p.a, p.gj, p.gi), 1)
        assert keys.unique(dim=0).shape[0] == keys.shape[0]


def test_per_image_loss_is_batch_size_independent():
    head = FakeHead()
    crit = DetectionLoss(head, HYP)
    bs = 8
    preds = make_preds(head, bs, seed=3)
    t = make_targets(bs, per_image=4, seed=3)
    t = t[t[:, 0] != 5]  # one image without objects
    batch = crit(preds, t, imgs(bs), reduction="none")
    assert batch.shape == (bs,)
    for b in range(bs):
        tb = t[t[:, 0] == b].clone()
        tb[:, 0] = 0
        alone = crit([p[b:b + 1] for p in preds], tb, imgs(1), reduction="none")
        torch.testing.assert_close(alone[0], batch[b], atol=1e-5, rtol=1e-5)


def test_single_image_none_equals_mean():
    head = FakeHead()
    crit = DetectionLoss(head, HYP)
    preds, t = make_preds(head, 1), make_targets(1, per_image=5)
    loss, items = crit(preds, t, imgs(1))
    torch.testing.assert_close(crit(preds, t, imgs(1), reduction="none")[0], items[3])


def test_optimising_predictions_reduces_loss():
    torch.manual_seed(0)
    head = FakeHead()
    crit = DetectionLoss(head, HYP)
    preds = make_preds(head, 2, img=64, grad=True)
    t = make_targets(2, per_image=3)
    opt = torch.optim.Adam(preds, lr=0.05)
    first = None
    for _ in range(50):
        loss, _ = crit(preds, t, imgs(2, 64))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = crit(preds, t, imgs(2, 64))[0].item()
    assert final < 0.5 * first


def test_without_ota_candidates_are_positives():
    head = FakeHead()
    crit = DetectionLoss(head, {**HYP, "loss_ota": 0})
    preds, t = make_preds(head, 2), make_targets(2)
    pos = crit.assign(preds, t, (IMG, IMG))
    expect = sum(find_candidates(t, head.anchors[i], p.shape[2:4], 4.0)[0].numel()
                 for i, p in enumerate(preds))
    assert sum(p.b.numel() for p in pos) == expect
    assert torch.isfinite(crit(preds, t, imgs(2))[0])


def test_single_class_has_no_class_loss_and_smoothing_changes_cls():
    head1 = FakeHead(nc=1)
    _, items = DetectionLoss(head1, HYP)(make_preds(head1, 2), make_targets(2, nc=1), imgs(2))
    assert items[2] == 0 and items[0] > 0
    head = FakeHead()
    preds, t = make_preds(head, 2), make_targets(2)
    plain = DetectionLoss(head, HYP)(preds, t, imgs(2))[1]
    smooth = DetectionLoss(head, {**HYP, "label_smoothing": 0.1})(preds, t, imgs(2))[1]
    assert smooth[2] != plain[2]
    torch.testing.assert_close(smooth[:2], plain[:2])


def test_focal_and_autobalance_run():
    head = FakeHead()
    preds, t = make_preds(head, 2), make_targets(2)
    focal = DetectionLoss(head, {**HYP, "fl_gamma": 1.5})(preds, t, imgs(2))[0]
    assert torch.isfinite(focal) and focal > 0
    crit = DetectionLoss(head, HYP, autobalance=True)
    before = list(crit.balance)
    crit(preds, t, imgs(2))
    assert crit.balance != before and crit.balance[crit.ssi] == pytest.approx(1.0)


def test_autocast_bf16_inputs_give_fp32_loss():
    head = FakeHead()
    preds = [p.bfloat16() for p in make_preds(head, 2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, items = DetectionLoss(head, HYP)(preds, make_targets(2), imgs(2))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_image_size_defaults_from_grid():
    head = FakeHead()
    crit = DetectionLoss(head, HYP)
    preds, t = make_preds(head, 2), make_targets(2)
    torch.testing.assert_close(crit(preds, t)[0], crit(preds, t, imgs(2))[0])


def test_source_never_names_a_device():
    assert "cuda" not in inspect.getsource(loss_mod)


# ----------------------------------------------------------------------------- whole models
def test_compute_loss_single_head():
    head = FakeHead()
    model = FakeModel(head)
    crit = ComputeLoss(model, HYP)
    preds, t = make_preds(head, 2), make_targets(2)
    loss, items = crit(preds, t, imgs(2))
    ref_loss, ref_items = DetectionLoss(head, HYP)(preds, t, imgs(2))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(items, ref_items)
    assert crit.item_names == ["box", "obj", "cls", "total"]
    assert crit(preds, t, imgs(2), reduction="none").shape == (1, 2)


def test_compute_loss_dynamic_is_sum_of_detectors():
    h1 = FakeHead()
    h2 = FakeHead(anchors=((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146),
                           (142, 110, 192, 243, 459, 401)))
    crit = ComputeLoss(FakeModel(h1, h2), HYP)
    p1, p2 = make_preds(h1, 3, seed=1), make_preds(h2, 3, seed=2)
    t = make_targets(3)
    out = DyOut(p1, p2, torch.rand(3))
    loss, items = crit(out, t, imgs(3))
    l1, i1 = DetectionLoss(h1, HYP)(p1, t, imgs(3))
    l2, i2 = DetectionLoss(h2, HYP)(p2, t, imgs(3))
    torch.testing.assert_close(loss, l1 + l2)
    assert len(items) == len(crit.item_names) == 12
    torch.testing.assert_close(items[:4], i1 + i2)
    torch.testing.assert_close(items[4:8], i1)
    torch.testing.assert_close(items[8:], i2)
    per_image = crit(out, t, imgs(3), reduction="none")
    assert per_image.shape == (2, 3)
    for k, (h, p) in enumerate(((h1, p1), (h2, p2))):
        alone = DetectionLoss(h, HYP)(p, t, imgs(3), reduction="none")
        torch.testing.assert_close(per_image[k], alone)


def test_compute_loss_unwraps_module_and_checks_outputs():
    head = FakeHead()
    crit = ComputeLoss(nn.DataParallel(FakeModel(head)), HYP)  # a CPU DataParallel just wraps
    with pytest.raises(ValueError):
        crit(make_preds(head, 1)[:2], make_targets(1), imgs(1))
    with pytest.raises(ValueError):
        crit(make_preds(head, 1), make_targets(1), imgs(1), reduction="sum")


def test_real_idetect_head():
    from models.head import IDetect
    head = IDetect(4, ANCHORS, [8, 8, 8], [8, 16, 32]).train()
    xs = [torch.randn(2, 8, IMG // s, IMG // s) for s in (8, 16, 32)]
    preds = head(xs)
    loss, _ = ComputeLoss(FakeModel(head), HYP)(preds, make_targets(2), imgs(2))
    loss.backward()
    assert torch.isfinite(loss) and head.m[0].weight.grad.abs().sum() > 0


def test_real_model_integration():
    from models.yolo import build_model
    model = build_model("cfg/yolov7-tiny.yaml")
    model.train()
    x = torch.randn(2, 3, 96, 96)
    out = model(x)
    nc = model.heads[0].nc
    t = make_targets(2, nc=nc)
    hyp = scale_loss_gains(HYP, model.heads[0].nl, nc, 96)
    loss, items = ComputeLoss(model, hyp)(out, t, x)
    loss.backward()
    assert torch.isfinite(loss) and items.shape == (4,)
