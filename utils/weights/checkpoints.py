"""Checkpoint I/O: our ``dydet-v1`` format, plus strict importers for the official releases.

Formats read by :func:`load_checkpoint`:

* ``dydet-v1`` (ours, written by :func:`save_checkpoint`): a plain dict of tensors and Python
  data, readable with ``torch.load(weights_only=True)``;
* official DynamicDet releases (``dy-yolov7*.pt``): ``model`` / ``ema`` hold an fp16 state_dict
  with ``model_b``, ``model_b2``, ``model_h``, ``model_h2`` and ``router`` groups; the official
  router predicts *easiness*, ours difficulty φ, so its last layer is negated on import;
* official YOLOv7 releases (``yolov7*.pt``): a pickled ``models.yolo.Model``, read through
  :mod:`utils.weights.safe_pickle` into a plain model, or into both detectors of a dynamic model (a
  stage-1 warm start).

Every load is strict: after mapping, any missing, unexpected or mis-shaped tensor is an error.
"""
from __future__ import annotations

import copy
import datetime
import logging
import pickle
import platform
import subprocess
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.data.coco_names import COCO_NAMES
from utils.io import atomic_write
from utils.torch_utils import de_parallel
from utils.validate import describe_file
from utils.weights.safe_pickle import CheckpointError, Stub, load_restricted, module_tree_state_dict

__all__ = [
    "DYNAMICDET", "FORMAT", "YOLOV7", "CheckpointError", "atomic_save", "check_plain", "checkpoint_dict",
    "default_meta", "detect_format", "flip_router", "load_checkpoint", "load_strict", "read_checkpoint",
    "save_checkpoint", "strip_aux_heads", "transfer_weights", "yolov7_to_dynamic",
]

LOGGER = logging.getLogger(__name__)
FORMAT = "dydet-v1"
DYNAMICDET = "dynamicdet-official"
YOLOV7 = "yolov7-official"
RESERVED_KEYS = frozenset({"format", "model", "cfg", "names", "img_size", "thresholds", "meta"})
REPO_ROOT = Path(__file__).resolve().parents[2]
PLAIN_SCALARS = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device)
LIST_LIMIT = 10  # names shown per category in mismatch reports
# (layers, tensors) of the official YOLOv7 files after dropping auxiliary heads -> config name;
# counted from shared/reference/*.official-keys.json. Used only when no cfg is given.
YOLOV7_FINGERPRINTS: dict[tuple[int, int], str] = {
    (78, 344): "yolov7-tiny", (106, 566): "yolov7", (122, 644): "yolov7x", (119, 636): "yolov7-w6",
}


# ---- saving ------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, model: nn.Module, *, names: Iterable[str], img_size: int | None = None,
                    thresholds: Mapping | None = None, meta: Mapping | None = None,
                    extra: Mapping | None = None) -> Path:
    """Atomically write ``model`` (plus optimizer/EMA/... state in ``extra``) as ``dydet-v1``.

    ``img_size`` is the input size the model was trained (or calibrated) at: inference uses it
    when the caller gives none.
    """
    ckpt = checkpoint_dict(model, names=names, img_size=img_size, thresholds=thresholds, meta=meta, extra=extra)
    path = Path(path)
    atomic_save(ckpt, path)
    return path


def checkpoint_dict(model: nn.Module, *, names: Iterable[str], img_size: int | None = None,
                    thresholds: Mapping | None = None, meta: Mapping | None = None,
                    extra: Mapping | None = None) -> dict:
    """The ``dydet-v1`` dict for ``model``; everything in it must be tensors or plain Python."""
    model = de_parallel(model)
    if model.fused:
        raise CheckpointError("cannot save a fused model: its tensors no longer match its config")
    names = [str(n) for n in names]
    nc = model.cfg.get("nc")
    if nc is not None and len(names) != int(nc):
        raise CheckpointError(f"{len(names)} class names for a model with nc={nc}")
    clash = RESERVED_KEYS & set(extra or {})
    if clash:
        raise CheckpointError(f"extra checkpoint entries may not use reserved keys {sorted(clash)}")
    ckpt = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "cfg": copy.deepcopy(dict(model.cfg)),
        "names": names,
        "img_size": int(img_size) if img_size else None,
        "thresholds": dict(thresholds or {}),
        "meta": {**default_meta(), **dict(meta or {})},
        **dict(extra or {}),
    }
    for key, value in ckpt.items():
        check_plain(value, key)
    return ckpt


def strip_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """A release copy of a ``dydet-v1`` file: weights (fp16 floats if ``half``), cfg, names,
    calibration and meta only — no optimizer or training state. ``src`` is not modified."""
    ckpt = read_checkpoint(src)
    if detect_format(ckpt) != FORMAT:
        raise CheckpointError(f"{src}: only {FORMAT} checkpoints can be stripped")
    weights = {k: v.half() if half and v.is_floating_point() else v for k, v in ckpt["model"].items()}
    out = {k: ckpt[k] for k in RESERVED_KEYS if k in ckpt}
    out.update(model=weights, meta={**dict(ckpt.get("meta") or {}), "stripped_from": Path(src).name})
    atomic_save(out, Path(dst))
    return Path(dst)


def check_plain(obj: Any, where: str) -> None:
    """Raise unless ``obj`` is tensors and plain Python only (loadable with weights_only).

    Types are checked exactly: subclasses such as numpy.float64 or TorchVersion would pickle
    as their own class and break ``torch.load(weights_only=True)``.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in PLAIN_SCALARS:
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in (str, int, float, bool):
                raise CheckpointError(f"checkpoint entry {where}: key {k!r} is not a str or number")
            check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"checkpoint entry {where} is a {type(obj).__name__}; only tensors and "
                          "plain Python (dict/list/tuple/str/int/float/bool/None) can be saved")


def default_meta() -> dict:
    """Provenance written into every checkpoint: date, versions and the git commit if any."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "git": git_hash(),
    }


def git_hash(repo: Path = REPO_ROOT) -> str | None:
    """Short commit hash of ``repo`` (with ``-dirty`` if modified), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`utils.io.atomic_write`: the previous file survives any failure."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


# ---- reading -----------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> Any:
    """The raw object in ``path``: plain weights-only load first, restricted unpickling second."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise not_a_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(path):  # random bytes, a legacy pickle: nothing safe to try
            raise not_a_checkpoint(path) from e
        # needs globals beyond tensors: possibly a pickled YOLOv7 model
    except Exception as e:  # noqa: BLE001  (torch raises many types for foreign files)
        raise not_a_checkpoint(path) from e
    return load_restricted(path)


def not_a_checkpoint(path: Path) -> CheckpointError:
    """The one-line error for a file torch cannot read, saying what it seems to hold."""
    return CheckpointError(f"{path}: not a PyTorch checkpoint ({describe_file(path)})")


def official_weights(ckpt: Mapping) -> Any:
    """The ``ema`` entry when present and not None, else ``model`` (official conventions)."""
    ema = ckpt.get("ema")
    return ema if ema is not None else ckpt.get("model")


def detect_format(ckpt: Any) -> str:
    """``dydet-v1``, ``dynamicdet-official`` or ``yolov7-official``; anything else is an error."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(ckpt).__name__}, expected a dict")
    if "format" in ckpt:
        if ckpt["format"] != FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {ckpt['format']!r} "
                                  f"(expected {FORMAT!r})")
        absent = sorted({"model", "cfg", "names"} - set(ckpt))
        if absent:
            raise CheckpointError(f"{FORMAT} checkpoint lacks entries {absent}")
        return FORMAT
    weights = official_weights(ckpt)
    if isinstance(weights, Stub):  # a pickled model: top-level modules tell which family
        children = weights.__dict__.get("_modules") or {}
        return DYNAMICDET if "model_b" in children or "router" in children else YOLOV7
    if isinstance(weights, Mapping) and any(str(k).startswith(("model_b.", "router.")) for k in weights):
        return DYNAMICDET
    raise CheckpointError(
        "unrecognised checkpoint: expected a dydet-v1 file, an official DynamicDet release "
        "(model/ema state_dict with model_b.*, router.*) or an official YOLOv7 release (pickled model)")


def load_checkpoint(path: str | Path, cfg: str | Path | dict | None = None, nc: int | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build the model stored in (or described by ``cfg`` for) ``path`` and load it strictly.

    ``cfg`` is required for official DynamicDet files, optional for YOLOv7 files (choose a
    ``dy-*`` config for a two-detector warm start) and ignored for ``dydet-v1`` files. Returns
    ``(model, info)`` with info keys ``format``, ``names``, ``img_size`` (the size it was
    trained at, or None), ``thresholds``, ``meta``, ``extra``, ``not_loaded``, ``dropped`` and
    ``path``.
    """
    ckpt = read_checkpoint(path)
    kind = detect_format(ckpt)
    loader = {FORMAT: _load_ours, DYNAMICDET: _load_dynamicdet, YOLOV7: _load_yolov7}[kind]
    model, info = loader(ckpt, cfg, nc, str(path))
    info = {"format": kind, "img_size": None, "thresholds": {}, "meta": {}, "extra": {}, "not_loaded": [],
            "dropped": [], **info, "names": list(model.names), "path": str(path)}
    return model.to(device), info


def _build(cfg: str | Path | dict, nc: int | None = None, names: list[str] | None = None) -> nn.Module:
    """``models.yolo.build_model`` (imported lazily: models may import utils)."""
    from models.yolo import build_model
    try:
        return build_model(cfg, nc=nc, names=names)
    except (FileNotFoundError, ValueError, KeyError) as e:
        label = "<dict>" if isinstance(cfg, dict) else str(cfg)
        raise CheckpointError(f"cannot build model from cfg {label}: {e}") from e


def _load_ours(ckpt: Mapping, cfg: Any, nc: int | None, source: str) -> tuple[nn.Module, dict]:
    """``dydet-v1``: rebuild from the stored cfg and names, load strictly."""
    stored_nc = ckpt["cfg"].get("nc")
    if nc is not None and stored_nc is not None and int(nc) != int(stored_nc):
        raise CheckpointError(f"{source}: checkpoint has nc={stored_nc} but nc={nc} was requested")
    model = _build(ckpt["cfg"], names=list(ckpt["names"]))
    load_strict(model, ckpt["model"], source=source)
    extra = {k: v for k, v in ckpt.items() if k not in RESERVED_KEYS}
    thresholds = dict(ckpt.get("thresholds") or {})
    info = {"thresholds": thresholds, "meta": dict(ckpt.get("meta") or {}), "extra": extra,
            "img_size": ckpt.get("img_size") or thresholds.get("img_size")}  # older files: the calibration's size
    if cfg is not None:
        target = _build(cfg, names=model.names)
        if target.is_dynamic and not model.is_dynamic:  # warm start of both detectors, as for YOLOv7 files
            return _plain_into_dynamic(model.state_dict(), target, source), {**info, "thresholds": {}}
        LOGGER.info("%s: ignoring cfg=%s, %s checkpoints carry their own architecture", source, cfg, FORMAT)
    return model, info


def _plain_into_dynamic(state: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> nn.Module:
    """A plain detector's weights in both detectors of ``model``; the router stays fresh.

    The CBLinear projections start at zero, so backbone 2 initially equals backbone 1 and
    detector 2 starts as a copy of detector 1 (a random composite link would scramble the
    pretrained backbone-2 features); training then learns what the link adds.
    """
    state, fresh = yolov7_to_dynamic(state, model)
    LOGGER.info("%s: warm start of both detectors; %d tensors keep their fresh init (CBLinear at zero, router)",
                source, len(fresh))
    load_strict(model, state, ignore=fresh, source=source)
    from models.link import CBLinear
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CBLinear):
                m.conv.weight.zero_()
                m.conv.bias.zero_()
    return model


def _official_meta(ckpt: Mapping) -> dict:
    """Plain scalar entries of an official file (epoch, ...), for provenance; no long logs."""
    return {k: v for k, v in ckpt.items()
            if type(v) in (int, float) or (type(v) is str and len(v) <= 200)}


def _load_dynamicdet(ckpt: Mapping, cfg: Any, nc: int | None, source: str) -> tuple[nn.Module, dict]:
    """Official DynamicDet release: same names as ours, router flipped, COCO class names."""
    if cfg is None:
        raise CheckpointError(f"{source}: official DynamicDet checkpoints do not store the architecture; "
                              "pass cfg, e.g. 'dy-yolov7', 'dy-yolov7x' or 'dy-yolov7-w6'")
    model = _build(cfg, nc=nc, names=_default_names(nc))
    weights = official_weights(ckpt)
    if isinstance(weights, Stub):  # a pickled training-time model rather than a state_dict
        weights = module_tree_state_dict(weights)
    load_strict(model, flip_router(weights), source=source)
    return model, {"meta": _official_meta(ckpt)}


def _default_names(nc: int | None) -> list[str] | None:
    """COCO names for 80 classes (official releases store none)."""
    return list(COCO_NAMES) if nc in (None, len(COCO_NAMES)) else None


def flip_router(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official easiness router -> difficulty φ: negate the last layer, sigmoid(-z) = 1 - sigmoid(z)."""
    out = dict(state)
    for key in ("router.layer2.weight", "router.layer2.bias"):
        if key in out:
            out[key] = -out[key]
    return out


def _load_yolov7(ckpt: Mapping, cfg: Any, nc: int | None, source: str) -> tuple[nn.Module, dict]:
    """Official YOLOv7 pickle: into a plain model, or both detectors of a dynamic one."""
    pickled = official_weights(ckpt)
    state, dropped = strip_aux_heads(module_tree_state_dict(pickled))
    if cfg is None:
        cfg = _guess_yolov7_cfg(state, source)
    nc = nc if nc is not None else _head_nc(state)
    model = _build(cfg, nc=nc, names=_yolov7_names(pickled, nc))
    not_loaded: list[str] = []
    if model.is_dynamic:
        not_loaded = yolov7_to_dynamic(state, model)[1]
        _plain_into_dynamic(state, model, source)
    else:
        load_strict(model, state, source=source)
    return model, {"meta": _official_meta(ckpt), "not_loaded": not_loaded, "dropped": dropped}


def _yolov7_names(pickled: Stub, nc: int | None) -> list[str] | None:
    """Class names pickled with the model when they are plain and fit ``nc``, else COCO's."""
    names = getattr(pickled, "__dict__", {}).get("names")
    if isinstance(names, (list, tuple)) and len(names) == nc and all(isinstance(n, str) for n in names):
        return list(names)
    return _default_names(nc)


def _layer(key: str) -> int:
    """Layer index of a ``model.{i}.*`` key."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit():
        raise CheckpointError(f"unexpected YOLOv7 tensor name {key!r} (expected model.<i>.*)")
    return int(parts[1])


def _head_nc(state: Mapping[str, torch.Tensor]) -> int | None:
    """Number of classes from the last layer's first output conv and anchors."""
    last = max(_layer(k) for k in state)
    conv, anchors = state.get(f"model.{last}.m.0.weight"), state.get(f"model.{last}.anchors")
    if conv is None or anchors is None or anchors.dim() != 3:
        return None
    return int(conv.shape[0]) // int(anchors.shape[1]) - 5


def _guess_yolov7_cfg(state: Mapping[str, torch.Tensor], source: str) -> str:
    """Config name of an official YOLOv7 release, recognised by its layer and tensor counts."""
    layers = max(_layer(k) for k in state) + 1
    name = YOLOV7_FINGERPRINTS.get((layers, len(state)))
    if name is None:
        raise CheckpointError(f"{source}: not a known YOLOv7 release ({layers} layers, "
                              f"{len(state)} tensors); pass cfg explicitly")
    LOGGER.info("%s: recognised as %s", source, name)
    return name


def strip_aux_heads(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Training-form YOLOv7 (IAuxDetect) -> inference form.

    When the last layer L has auxiliary convs ``m2.*`` (one per level, nl of them), the nl layers
    before it only feed those branches: drop them and ``m2.*``, and renumber L -> L - nl.
    Returns the new state and the dropped names.
    """
    last = max(_layer(k) for k in state)
    head = f"model.{last}."
    aux = [k for k in state if k.startswith(head + "m2.")]
    if not aux:
        return dict(state), []
    nl = len({k.split(".")[3] for k in aux})
    aux_layers = set(range(last - nl, last))
    dropped = [k for k in state if k.startswith(head + "m2.") or _layer(k) in aux_layers]
    skip = set(dropped)
    out = {}
    for k, v in state.items():
        if k not in skip:
            out[f"model.{last - nl}.{k[len(head):]}" if k.startswith(head) else k] = v
    LOGGER.info("dropped %d tensors of the auxiliary training heads (layers %d-%d and model.%d.m2.*), "
                "unused at inference; model.%d -> model.%d", len(dropped), last - nl, last - 1, last, last,
                last - nl)
    return out, dropped


def yolov7_to_dynamic(state: Mapping[str, torch.Tensor],
                      model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map YOLOv7 ``model.{i}.*`` into both detectors of a DyModel (stage-1 warm start).

    Backbone layer i -> ``model_b.{i}`` and ``model_b2.{b2_index[i]}``; head layer j ->
    ``model_h.{j-n}`` and ``model_h2.{j-n}``. Returns the mapped state and the target names that
    intentionally keep their fresh init (CBLinear/CBFuse blocks of ``model_b2`` and the router).
    """
    n, b2 = int(model.n_backbone), dict(model.b2_index)
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        i, rest = _layer(key), key.split(".", 2)[2]
        if i < n:
            out[f"model_b.{i}.{rest}"] = v
            if i in b2:
                out[f"model_b2.{b2[i]}.{rest}"] = v
        else:
            out[f"model_h.{i - n}.{rest}"] = v
            out[f"model_h2.{i - n}.{rest}"] = v
    owned = {str(j) for j in b2.values()}
    fresh = [k for k in model.state_dict()
             if k.startswith("router.") or (k.startswith("model_b2.") and k.split(".")[1] not in owned)]
    return out, fresh


# ---- strict loading ----------------------------------------------------------------------------
def _short(items: list[str]) -> str:
    """The first LIST_LIMIT items, and how many more there are."""
    shown = ", ".join(items[:LIST_LIMIT])
    return shown + (f", ... (+{len(items) - LIST_LIMIT} more)" if len(items) > LIST_LIMIT else "")


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, ignore: Iterable[str] = (),
                source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` requiring identical names and shapes (``ignore``: keep init).

    Values are copied into the model's own tensors, so they take the model's dtype (fp16 -> fp32).
    """
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} entries are not tensors: {_short(bad)}")
    target = model.state_dict()
    expected = set(target) - set(ignore)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    wrong = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                   for k in expected & set(state) if tuple(state[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong:
        lines = [f"{source}: checkpoint does not match the model ({len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(wrong)} shape mismatches)"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                lines.append(f"  {label} ({len(items)}): {_short(items)}")
        raise CheckpointError("\n".join(lines))
    full = dict(target)
    full.update({k: state[k] for k in expected})
    model.load_state_dict(full, strict=True)  # copies in place, casting to each tensor's dtype


def transfer_weights(src: nn.Module, dst: nn.Module) -> list[str]:
    """Copy ``src`` into ``dst`` (same architecture, other classes); return re-initialised names.

    Only tensors of the detection heads may differ in shape (they depend on the number of
    classes); those keep ``dst``'s fresh init. Any other difference is a :class:`CheckpointError`.
    """
    heads = set(map(id, getattr(dst, "heads", ())))
    head_prefixes = tuple(f"{name}." for name, m in dst.named_modules() if id(m) in heads)
    source, target = src.state_dict(), dst.state_dict()
    reinit = sorted(k for k in target.keys() & source.keys()
                    if source[k].shape != target[k].shape and k.startswith(head_prefixes))
    load_strict(dst, {k: v for k, v in source.items() if k not in reinit}, ignore=reinit,
                source="transfer")
    return reinit
