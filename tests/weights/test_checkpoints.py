"""Checkpoint save/load: our format, official DynamicDet and YOLOv7 importers, strictness, atomicity."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from models.yolo import build_model
from tests.weights.test_safe_pickle import (
    attach_tensor,
    fake_state,
    fake_tensor,
    fake_yolo_modules,
    manifest,
    save_fake_yolov7,
)
from utils.data.coco_names import COCO_NAMES
from utils.weights import checkpoints
from utils.weights.checkpoints import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    load_strict,
    read_checkpoint,
    save_checkpoint,
    strip_aux_heads,
    yolov7_to_dynamic,
)


def save_fake_dynamicdet(path: Path, name: str, *, ema: bool = True, drop: str | None = None,
                         add: str | None = None) -> dict[str, torch.Tensor]:
    """Official-style DynamicDet file from the key manifest; returns the weights it holds."""
    keys = manifest(name)
    state = fake_state(keys, cheap=True)
    for k in keys:
        if k.startswith("router.") or k.startswith("model_h2.") and k.endswith("m.0.bias"):
            state[k] = fake_tensor(k, keys[k])  # real values where the tests look
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3, dtype=torch.float16)
    decoy = {k: torch.zeros((1,) * v.dim(), dtype=v.dtype).expand(v.shape) for k, v in state.items()}
    ckpt = {"epoch": -1, "best_fitness": None, "training_results": None, "optimizer": None,
            "wandb_id": None, "model": decoy if ema else state, "ema": state if ema else None}
    torch.save(ckpt, path)
    return state


# ---- our format --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_model("yolov7-tiny", nc=3, names=["a", "b", "c"])


def test_round_trip(tmp_path: Path, tiny: nn.Module) -> None:
    optimizer = {"state": {0: {"momentum_buffer": torch.ones(3)}},  # SGD state_dict layout
                 "param_groups": [{"lr": 0.01, "momentum": 0.9, "nesterov": True, "params": [0]}]}
    extra = {"optimizer": optimizer, "ema": {"updates": 5, "state": tiny.state_dict()}}
    path = save_checkpoint(tmp_path / "sub" / "last.pt", tiny, names=tiny.names, thresholds={"0.5": 0.3},
                           meta={"epoch": 4}, extra=extra)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format"] == FORMAT and raw["cfg"]["nc"] == 3 and raw["meta"]["epoch"] == 4
    assert raw["meta"]["torch"] == torch.__version__ and "date" in raw["meta"] and "git" in raw["meta"]
    model, info = load_checkpoint(path)
    ref = tiny.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert info["format"] == FORMAT and info["names"] == ["a", "b", "c"] == model.names
    assert info["thresholds"] == {"0.5": 0.3} and info["meta"]["epoch"] == 4
    assert info["extra"]["ema"]["updates"] == 5
    assert torch.equal(info["extra"]["optimizer"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_saved_tensors_are_detached_cpu_copies_of_the_dtype(tmp_path: Path, tiny: nn.Module) -> None:
    ckpt = checkpoints.checkpoint_dict(tiny, names=tiny.names)
    assert all(not v.requires_grad and v.device.type == "cpu" for v in ckpt["model"].values())


def test_save_rejects_bad_input(tmp_path: Path, tiny: nn.Module) -> None:
    with pytest.raises(CheckpointError, match="class names"):
        save_checkpoint(tmp_path / "a.pt", tiny, names=["a"])
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "a.pt", tiny, names=tiny.names, extra={"model": {}})
    with pytest.raises(CheckpointError, match="sched is a object"):
        save_checkpoint(tmp_path / "a.pt", tiny, names=tiny.names, extra={"sched": object()})
    assert list(tmp_path.iterdir()) == []


def test_fused_model_is_not_saved(tmp_path: Path) -> None:
    model = build_model("yolov7-tiny").fuse()
    with pytest.raises(CheckpointError, match="fused"):
        save_checkpoint(tmp_path / "f.pt", model, names=model.names)


def test_incomplete_dydet_file(tmp_path: Path) -> None:
    torch.save({"format": FORMAT, "model": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="cfg"):
        load_checkpoint(tmp_path / "bad.pt")


def test_nc_mismatch_with_our_format(tmp_path: Path, tiny: nn.Module) -> None:
    path = save_checkpoint(tmp_path / "m.pt", tiny, names=tiny.names)
    with pytest.raises(CheckpointError, match="nc=3 but nc=80"):
        load_checkpoint(path, nc=80)


def test_transfer_weights_to_other_classes(tiny: nn.Module) -> None:
    dst = build_model("yolov7-tiny", nc=2, names=["p", "q"])
    reinit = checkpoints.transfer_weights(tiny, dst)
    assert reinit and all(k.startswith("model.77.") and (".m." in k or ".im." in k) for k in reinit)
    assert torch.equal(dst.state_dict()["model.0.conv.weight"], tiny.state_dict()["model.0.conv.weight"])
    with pytest.raises(CheckpointError, match="missing"):
        checkpoints.transfer_weights(tiny, build_model("yolov7", nc=2))


# ---- atomic writes -----------------------------------------------------------------------------
def _failing_save(obj, f, *args, **kwargs) -> None:
    f.write(b"half a checkpoint")
    raise OSError("disk full")


def test_failed_save_keeps_previous_file(tmp_path: Path, tiny: nn.Module,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "best.pt", tiny, names=tiny.names, meta={"epoch": 1})
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny, names=tiny.names, meta={"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_saved_file_has_the_usual_permissions(tmp_path: Path, tiny: nn.Module) -> None:
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "w.pt", tiny, names=tiny.names)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_failed_first_save_leaves_nothing(tmp_path: Path, tiny: nn.Module,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "new.pt", tiny, names=tiny.names)
    assert list(tmp_path.iterdir()) == []


# ---- errors on unknown input -------------------------------------------------------------------
def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unrecognised"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "dydet-v9", "model": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="dydet-v9"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list"):
        load_checkpoint(tmp_path / "list.pt")


# ---- strict loading (unit level) ---------------------------------------------------------------
def test_load_strict_reports_counts_and_truncates() -> None:
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["0.weight"] = torch.zeros(3, 3)
    del state["1.bias"]
    state.update({f"bogus.{i}": torch.zeros(1) for i in range(15)})
    with pytest.raises(CheckpointError) as err:
        load_strict(net, state, source="x.pt")
    msg = str(err.value)
    assert "1 missing, 15 unexpected, 1 shape mismatches" in msg
    assert "1.bias" in msg and "0.weight (3, 3) vs model (2, 2)" in msg and "(+5 more)" in msg


def test_load_strict_casts_and_ignores() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    before = net[0].bias.clone()
    state = {k: v.half() + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    del state["0.bias"]
    load_strict(net, state, ignore=["0.bias"])
    with pytest.raises(CheckpointError, match="not tensors: 0.weight"):
        load_strict(net, {**state, "0.weight": [1.0]})
    assert net[0].weight.dtype == torch.float32 and torch.equal(net[0].bias, before)
    assert torch.allclose(net[1].running_var, torch.full((2,), 2.0))


def test_strip_aux_heads_hand_made() -> None:
    keys = {"model.0.conv.weight": [8, 3, 3, 3], "model.1.conv.weight": [8, 8, 1, 1],
            "model.2.conv.weight": [16, 8, 3, 3], "model.3.conv.weight": [16, 8, 3, 3],
            "model.4.anchors": [2, 3, 2],
            "model.4.m.0.weight": [24, 8, 1, 1], "model.4.m.1.weight": [24, 8, 1, 1],
            "model.4.m2.0.weight": [24, 16, 1, 1], "model.4.m2.1.weight": [24, 16, 1, 1]}
    out, dropped = strip_aux_heads(fake_state(keys))
    assert sorted(out) == ["model.0.conv.weight", "model.1.conv.weight", "model.2.anchors",
                           "model.2.m.0.weight", "model.2.m.1.weight"]
    assert len(dropped) == 4 and "model.4.m2.1.weight" in dropped and "model.3.conv.weight" in dropped
    plain = fake_state({"model.0.w": [1], "model.1.anchors": [1, 3, 2]})
    assert strip_aux_heads(plain) == (plain, [])


# ---- official DynamicDet releases --------------------------------------------------------------
@pytest.fixture(scope="module")
def dy7(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, nn.Module, dict]:
    """A fake official dy-yolov7.pt, loaded once: (official weights, model, info)."""
    path = tmp_path_factory.mktemp("dy7") / "dy-yolov7.pt"
    official = save_fake_dynamicdet(path, "dy-yolov7")
    model, info = load_checkpoint(path, cfg="dy-yolov7")
    return official, model, info


def _check_dynamicdet_load(official: dict, model: nn.Module, info: dict) -> None:
    assert info["format"] == checkpoints.DYNAMICDET and info["names"] == list(COCO_NAMES) == model.names
    assert info["thresholds"] == {} and info["meta"]["epoch"] == -1
    sd = model.state_dict()
    assert set(sd) == set(official) and sd["model_b.1.conv.weight"].dtype == torch.float32
    key = next(k for k in official if k.startswith("model_h2.") and k.endswith("m.0.bias"))
    assert torch.equal(sd[key], official[key].float())  # the ema entry, not the decoy model
    assert torch.equal(sd["router.layer2.weight"], -official["router.layer2.weight"].float())
    assert torch.equal(sd["router.layer1.weight"], official["router.layer1.weight"].float())


def test_official_dy_yolov7_loads_strictly(dy7: tuple[dict, nn.Module, dict]) -> None:
    _check_dynamicdet_load(*dy7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dy-yolov7x", "dy-yolov7-w6"])
def test_official_dynamicdet_loads_strictly(tmp_path: Path, name: str) -> None:
    official = save_fake_dynamicdet(tmp_path / f"{name}.pt", name)
    _check_dynamicdet_load(official, *load_checkpoint(tmp_path / f"{name}.pt", cfg=name))


def test_official_router_flip_gives_difficulty(dy7: tuple[dict, nn.Module, dict]) -> None:
    official, model, _ = dy7
    feats = [torch.randn(2, c, 3, 3) for c in model.router.channels]
    pooled = torch.cat([f.mean((2, 3)) for f in feats], 1)
    w1, b1, w2, b2 = (official[f"router.layer{i}.{p}"].float() for i in (1, 2) for p in ("weight", "bias"))
    hidden = torch.relu(pooled @ w1.flatten(1).T + b1)
    easiness = torch.sigmoid(hidden @ w2.flatten(1).T + b2).flatten()
    with torch.no_grad():
        phi = model.router(feats)
    assert torch.allclose(phi, 1 - easiness, atol=1e-5)


def test_official_dynamicdet_needs_cfg(tmp_path: Path) -> None:
    state = {"model_b.0.conv.weight": torch.zeros(2, 3, 1, 1, dtype=torch.float16)}
    torch.save({"model": state, "ema": None, "epoch": -1}, tmp_path / "dy.pt")
    with pytest.raises(CheckpointError, match="pass cfg"):
        load_checkpoint(tmp_path / "dy.pt")


def test_official_dynamicdet_missing_and_extra_keys(tmp_path: Path) -> None:
    save_fake_dynamicdet(tmp_path / "a.pt", "dy-yolov7", drop="model_h.3.conv.weight",
                         add="model_h.999.extra")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "a.pt", cfg="dy-yolov7")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 0 shape mismatches" in msg
    assert "missing (1): model_h.3.conv.weight" in msg and "unexpected (1): model_h.999.extra" in msg


def test_yolov7_missing_and_extra_keys(tmp_path: Path) -> None:
    keys = dict(manifest("yolov7-tiny"))
    del keys["model.5.bn.bias"]
    keys["model.5.bn.extra"] = [3]
    path = save_fake_yolov7(tmp_path / "m.pt", fake_state(keys))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, cfg="yolov7-tiny")
    assert "missing (1): model.5.bn.bias" in str(err.value)
    assert "unexpected (1): model.5.bn.extra" in str(err.value)


@pytest.mark.slow
def test_pickled_dynamicdet_model(tmp_path: Path) -> None:
    """A DynamicDet training checkpoint pickles the whole model: read it through the stubs."""
    official = fake_state(manifest("dy-yolov7"), cheap=True)
    with fake_yolo_modules() as ns:
        pickled = ns.Model()
        for key, tensor in official.items():
            attach_tensor(pickled, key.split("."), tensor, ns.Node)
        torch.save({"model": pickled, "ema": None, "epoch": 3}, tmp_path / "dy.pt")
    model, info = load_checkpoint(tmp_path / "dy.pt", cfg="dy-yolov7")
    assert info["format"] == checkpoints.DYNAMICDET and info["meta"]["epoch"] == 3
    assert torch.equal(model.state_dict()["router.layer2.bias"], -official["router.layer2.bias"].float())


def test_official_dynamicdet_wrong_architecture(tmp_path: Path) -> None:
    save_fake_dynamicdet(tmp_path / "dy.pt", "dy-yolov7")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(tmp_path / "dy.pt", cfg="dy-yolov7-tiny")


# ---- official YOLOv7 pickles -------------------------------------------------------------------
def _check_equal(model_state: dict, src: dict, mapping: dict[str, str]) -> None:
    for dst, key in mapping.items():
        assert torch.equal(model_state[dst], src[key].to(model_state[dst].dtype)), dst


def test_yolov7_tiny_into_plain_model(tmp_path: Path) -> None:
    official = fake_state(manifest("yolov7-tiny"))
    path = save_fake_yolov7(tmp_path / "yolov7-tiny.pt", official, names=list(COCO_NAMES), ema=True)
    model, info = load_checkpoint(path)  # architecture recognised from the tensors
    assert info["format"] == checkpoints.YOLOV7 and not model.is_dynamic
    assert model.cfg["name"] == "yolov7-tiny" and info["names"] == list(COCO_NAMES)
    assert info["dropped"] == [] and info["not_loaded"] == [] and info["meta"]["epoch"] == -1
    _check_equal(model.state_dict(), official, {k: k for k in official})


def test_yolov7_custom_classes(tmp_path: Path) -> None:
    keys = dict(manifest("yolov7-tiny"))
    for k, s in keys.items():  # 3 classes: 3 anchors x (5 + 3) outputs
        if k.startswith("model.77.") and (".m." in k or ".im." in k or "anchor" in k):
            keys[k] = [24, *s[1:]] if ".m." in k else ([1, 24, 1, 1] if ".im." in k else s)
    path = save_fake_yolov7(tmp_path / "custom.pt", fake_state(keys), names=["x", "y", "z"])
    model, info = load_checkpoint(path)
    assert model.nc == 3 and info["names"] == ["x", "y", "z"]


def test_yolov7_tiny_warm_starts_both_detectors(tmp_path: Path) -> None:
    official = fake_state(manifest("yolov7-tiny"))
    path = save_fake_yolov7(tmp_path / "yolov7-tiny.pt", official)
    fresh = build_model("dy-yolov7-tiny")
    model, info = load_checkpoint(path, cfg="dy-yolov7-tiny")
    n, b2 = model.n_backbone, model.b2_index
    mapping = {}
    for key in official:
        i, rest = int(key.split(".")[1]), key.split(".", 2)[2]
        if i < n:
            mapping.update({f"model_b.{i}.{rest}": key, f"model_b2.{b2[i]}.{rest}": key})
        else:
            mapping.update({f"model_h.{i - n}.{rest}": key, f"model_h2.{i - n}.{rest}": key})
    sd = model.state_dict()
    _check_equal(sd, official, mapping)
    not_loaded = set(info["not_loaded"])
    assert not_loaded == set(sd) - set(mapping)
    assert {"router.layer1.weight", "router.layer2.bias", "model_b2.0.conv.weight"} <= not_loaded
    assert not any(k.startswith(("model_b.", "model_h")) for k in not_loaded)
    assert all(sd[k].shape == fresh.state_dict()[k].shape for k in not_loaded)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolov7-w6", "dy-yolov7-w6"])
def test_yolov7_w6_training_form(tmp_path: Path, cfg: str) -> None:
    keys = manifest("yolov7-w6")
    official = fake_state(keys, cheap=True)
    official["model.122.m.0.bias"] = fake_tensor("model.122.m.0.bias", keys["model.122.m.0.bias"])
    path = save_fake_yolov7(tmp_path / "yolov7-w6.pt", official)
    model, info = load_checkpoint(path, cfg=cfg)
    assert len(info["dropped"]) == 32
    assert all(k.startswith(("model.118.", "model.119.", "model.120.", "model.121.", "model.122.m2."))
               for k in info["dropped"])
    head = "model.118" if cfg == "yolov7-w6" else f"model_h2.{118 - model.n_backbone}"
    _check_equal(model.state_dict(), official, {f"{head}.m.0.bias": "model.122.m.0.bias"})


def test_yolov7_unknown_architecture_needs_cfg(tmp_path: Path) -> None:
    path = save_fake_yolov7(tmp_path / "odd.pt", fake_state({"model.0.conv.weight": [4, 3, 3, 3]}))
    with pytest.raises(CheckpointError, match="pass cfg"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, cfg="yolov7-tiny")


def test_yolov7_to_dynamic_on_a_fake_model() -> None:
    class FakeDy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n_backbone, self.b2_index = 2, {1: 2}  # layer 0 is shared (parameter-free)
            self.model_b = nn.ModuleList([nn.Identity(), nn.Linear(1, 1)])
            self.model_b2 = nn.ModuleList([nn.Linear(1, 1), nn.Identity(), nn.Linear(1, 1)])
            self.model_h = nn.ModuleList([nn.Linear(1, 1)])
            self.model_h2 = nn.ModuleList([nn.Linear(1, 1)])
            self.router = nn.Linear(1, 1)

    state = fake_state({"model.1.weight": [1, 1], "model.1.bias": [1], "model.2.weight": [1, 1],
                        "model.2.bias": [1]})
    out, fresh = yolov7_to_dynamic(state, FakeDy())
    assert sorted(out) == sorted(f"{g}.{p}" for g in ("model_b.1", "model_b2.2", "model_h.0", "model_h2.0")
                                 for p in ("weight", "bias"))
    assert sorted(fresh) == ["model_b2.0.bias", "model_b2.0.weight", "router.bias", "router.weight"]


@pytest.mark.parametrize("zipped", [True, False])
def test_trapped_file_is_refused_by_load_checkpoint(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"model": Trap()}, tmp_path / "trap.pt", _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match="refusing" if zipped else "zip-format"):
        load_checkpoint(tmp_path / "trap.pt", cfg="yolov7-tiny")
    assert not marker.exists()


def test_our_plain_checkpoint_warm_starts_a_dynamic_config(tmp_path: Path) -> None:
    plain = build_model("yolov7-tiny", names=["a", "b"])
    path = save_checkpoint(tmp_path / "plain.pt", plain, names=["a", "b"], thresholds={"table": {0: 1.0}})
    model, info = load_checkpoint(path, cfg="dy-yolov7-tiny")
    assert model.is_dynamic and model.names == ["a", "b"] and info["thresholds"] == {}
    sd, src = model.state_dict(), plain.state_dict()
    n = model.n_backbone
    assert torch.equal(sd["model_b.0.conv.weight"], src["model.0.conv.weight"])
    assert torch.equal(sd[f"model_b2.{model.b2_index[0]}.conv.weight"], src["model.0.conv.weight"])
    head = [k for k in src if int(k.split(".")[1]) >= n][0]
    rest = head.split(".", 2)[2]
    j = int(head.split(".")[1]) - n
    assert torch.equal(sd[f"model_h.{j}.{rest}"], src[head]) and torch.equal(sd[f"model_h2.{j}.{rest}"], src[head])
    with torch.no_grad():  # the composite link starts at zero: detector 2 starts as a copy of detector 1
        out = model.eval().forward_both(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(out.pred1, out.pred2)
    same, _ = load_checkpoint(path, cfg="yolov7-tiny")  # a plain cfg: the stored architecture is used
    assert not same.is_dynamic


def test_strip_checkpoint_keeps_what_inference_needs(tmp_path: Path) -> None:
    from utils.weights.checkpoints import strip_checkpoint
    model = build_model("yolov7-tiny", names=["a", "b"]).eval()
    src = save_checkpoint(tmp_path / "last.pt", model, names=["a", "b"], thresholds={"table": {0: 1.0}},
                          extra={"optimizer": {"lr": 0.1}, "epoch": 3})
    before = src.read_bytes()
    dst = strip_checkpoint(src, tmp_path / "release.pt")
    assert src.read_bytes() == before
    ckpt = read_checkpoint(dst)
    assert "optimizer" not in ckpt and "epoch" not in ckpt and ckpt["thresholds"] == {"table": {0: 1.0}}
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    loaded, _ = load_checkpoint(dst)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), model(x), atol=0.05, rtol=0.01)  # fp16 rounding only
    with pytest.raises(CheckpointError, match="only"):
        strip_checkpoint(save_fake_yolov7(tmp_path / "y.pt", fake_state(manifest("yolov7-tiny"))), tmp_path / "z.pt")


def test_strip_checkpoint_script(tmp_path: Path, capsys) -> None:
    from tests.conftest import load_script, tiny_checkpoint
    from utils.weights.checkpoints import read_checkpoint
    script = load_script("strip_checkpoint")
    src = tiny_checkpoint(tmp_path / "dy.pt")
    assert script.main(["--src", str(src), "--dst", str(tmp_path / "release.pt")]) == 0
    out = read_checkpoint(tmp_path / "release.pt")
    assert out["model"]["model_b.0.conv.weight"].dtype == torch.float16 and "optimizer" not in out
    assert capsys.readouterr().out.strip() == f"Saved {tmp_path / 'release.pt'}"
    assert script.main(["--src", str(src), "--dst", str(tmp_path / "fp32.pt"), "--fp32"]) == 0
    assert read_checkpoint(tmp_path / "fp32.pt")["model"]["model_b.0.conv.weight"].dtype == torch.float32
    for args, message in ((["--src", str(src), "--dst", str(src)], "another file"),
                          (["--src", str(tmp_path / "none.pt"), "--dst", str(tmp_path / "x.pt")], "none.pt")):
        assert script.main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
