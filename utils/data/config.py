"""Dataset description files: parse a data YAML and find the images and labels it points to.

Two YAML dialects are accepted:

* YOLOv7 form::

      train: ./coco/train2017.txt          # relative to the YAML's folder (falls back to the CWD)
      val: ./coco/val2017.txt
      nc: 80
      names: [person, bicycle, ...]

* Ultralytics form::

      path: ../datasets/coco8               # dataset root; relative to the YAML's folder
      train: images/train                   # relative to ``path``
      val: images/val
      names: {0: person, 1: bicycle, ...}

A split (``train``/``val``/``test``) may be a directory (searched recursively for images), a
``.txt`` file listing image paths, a single image, or a list of those. Labels follow the YOLO
convention: the last ``images`` folder of an image path is replaced by ``labels`` and the
extension by ``.txt``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import yaml

LOGGER = logging.getLogger(__name__)

IMG_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff",
                          ".webp", ".pfm"})
SPLITS = ("train", "val", "test", "router")  # router: images held out from the detectors, for train_router.py
PathLike = Union[str, os.PathLike]
Names = Union[Sequence[str], Mapping[int, str]]  # class names as a list or {id: name}

__all__ = [
    "DataConfig", "DataConfigError", "IMG_SUFFIXES", "load_data_config", "parse_data_dict",
    "names_list", "parse_names", "find_images", "image_to_label_path", "sources_digest", "load_hyp", "hyp_for",
]


class DataConfigError(ValueError):
    """A data or hyperparameter YAML is malformed or inconsistent."""


@dataclass(frozen=True)
class DataConfig:
    """A parsed data YAML: resolved split sources, class names and the dataset root."""

    path: Path
    names: list[str]
    nc: int
    train: list[Path] = field(default_factory=list)
    val: list[Path] = field(default_factory=list)
    test: list[Path] = field(default_factory=list)
    router: list[Path] = field(default_factory=list)
    yaml_file: Path | None = None

    def split(self, name: str) -> list[Path]:
        """The sources of split ``name`` (``train``, ``val``, ``test`` or ``router``)."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def load_data_config(file: PathLike, require: Sequence[str] = ("train", "val")) -> DataConfig:
    """Read and validate a data YAML.

    Splits listed in ``require`` must exist on disk (``FileNotFoundError`` naming the path);
    other splits that are missing are dropped with a warning.
    """
    file = Path(file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data config not found: {file}")
    with open(file, encoding="utf-8") as f:
        content = yaml.safe_load(f)
    if not isinstance(content, dict):
        raise DataConfigError(f"{file}: expected a mapping at the top level, got "
                              f"{type(content).__name__}")
    return parse_data_dict(content, base=file.parent.resolve(), require=require, yaml_file=file)


def parse_data_dict(content: dict[str, Any], base: Path, require: Sequence[str] = ("train", "val"),
                    yaml_file: Path | None = None) -> DataConfig:
    """Build a :class:`DataConfig` from an already loaded YAML mapping.

    ``base`` is the folder relative paths are resolved against (normally the YAML's folder).
    """
    where = str(yaml_file) if yaml_file else "data config"
    root = _resolve_root(content.get("path"), Path(base))
    names = parse_names(content.get("names"), content.get("nc"), where)
    splits = {s: _resolve_split(content.get(s), s, root, s in require, where) for s in SPLITS}
    return DataConfig(path=root, names=names, nc=len(names), yaml_file=yaml_file, **splits)


def names_list(names: Names) -> list[str]:
    """Class names as a list indexed by class id (a dict may have gaps, filled with the id)."""
    if isinstance(names, Mapping):
        n = max((int(k) for k in names), default=-1) + 1
        return [str(names.get(i, names.get(str(i), i))) for i in range(n)]
    return [str(n) for n in names]


def parse_names(names: Any, nc: Any, where: str = "data config") -> list[str]:
    """Normalise ``names`` (list or {index: name} dict) and check it against ``nc``."""
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DataConfigError(f"{where}: nc must be a positive integer, got {nc!r}")
    if names is None:
        if nc is None:
            raise DataConfigError(f"{where}: neither 'names' nor 'nc' is given")
        return [f"class{i}" for i in range(nc)]
    if isinstance(names, dict):
        names = _names_from_dict(names, where)
    elif not isinstance(names, (list, tuple)):
        raise DataConfigError(f"{where}: 'names' must be a list or a dict, got "
                              f"{type(names).__name__}")
    names = [str(n) for n in names]
    if not names:
        raise DataConfigError(f"{where}: 'names' is empty")
    if nc is not None and nc != len(names):
        raise DataConfigError(f"{where}: nc={nc} but {len(names)} names are given")
    return names


def _names_from_dict(names: dict, where: str) -> list[str]:
    try:
        by_index = {int(k): v for k, v in names.items()}
    except (TypeError, ValueError):
        raise DataConfigError(f"{where}: 'names' dict keys must be class indices") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise DataConfigError(f"{where}: 'names' dict keys must be 0..{len(by_index) - 1}, got "
                              f"{sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _resolve_root(path: Any, base: Path) -> Path:
    if path is None or str(path).strip() == "":
        return base
    root = Path(str(path)).expanduser()
    return root if root.is_absolute() else _resolve_relative(root, base)


def _resolve_relative(p: Path, base: Path) -> Path:
    """``base / p`` if it exists, else ``CWD / p`` if that exists, else ``base / p``."""
    if p.is_absolute():
        return p
    first = (base / p).resolve()
    if first.exists():
        return first
    second = (Path.cwd() / p).resolve()
    return second if second.exists() else first


def _resolve_split(value: Any, split: str, root: Path, required: bool, where: str) -> list[Path]:
    if value is None or value == "" or value == []:
        if required:
            raise DataConfigError(f"{where}: required split {split!r} is not given")
        return []
    entries = value if isinstance(value, (list, tuple)) else [value]
    resolved = []
    for entry in entries:
        p = _resolve_relative(Path(str(entry)).expanduser(), root)
        if p.exists():
            resolved.append(p)
        elif required:
            raise FileNotFoundError(f"{where}: {split} source not found: {p}")
        else:
            LOGGER.warning("%s: %s source not found, ignored: %s", where, split, p)
    return resolved


def find_images(sources: PathLike | Iterable[PathLike], root: PathLike | None = None) -> list[Path]:
    """Expand directories, ``.txt`` lists and image files into a de-duplicated list of images.

    Relative lines of a ``.txt`` list are resolved against the list's folder, then ``root``.
    Listed files that do not exist are kept (the dataset reports them as missing).
    Raises ``FileNotFoundError`` naming a source that does not exist.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: dict[Path, None] = {}
    for source in sources:
        for image in _expand_source(Path(source).expanduser(), root):
            found.setdefault(image, None)
    return list(found)


def _expand_source(source: Path, root: PathLike | None) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.rglob("*")
                      if p.suffix.lower() in IMG_SUFFIXES and p.is_file())
    if not source.exists():
        raise FileNotFoundError(f"image source not found: {source}")
    if source.suffix.lower() == ".txt":
        return _read_image_list(source, root)
    if source.suffix.lower() in IMG_SUFFIXES:
        return [source]
    raise DataConfigError(f"unsupported image source (not a folder, .txt list or image): {source}")


def _read_image_list(txt: Path, root: PathLike | None) -> list[Path]:
    images = []
    for line in txt.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        if not p.is_absolute():
            candidates = [txt.parent / p] + ([Path(root) / p] if root is not None else [])
            p = next((c for c in candidates if c.exists()), candidates[0])
        images.append(Path(os.path.normpath(p)))
    return images


def image_to_label_path(image: PathLike) -> Path:
    """YOLO label path of an image: last ``images`` folder -> ``labels``, suffix -> ``.txt``."""
    parts = list(Path(image).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def sources_digest(sources: Iterable[PathLike]) -> str:
    """A short stable digest of a list of sources (used to name label caches)."""
    text = "\n".join(str(Path(s).expanduser().resolve()) for s in sources)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def load_hyp(file: PathLike) -> dict[str, int | float]:
    """Read a hyperparameter YAML into a dict of numbers (``FileNotFoundError`` if missing)."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"hyperparameter file not found: {file}")
    with open(file, encoding="utf-8") as f:
        hyp = yaml.safe_load(f) or {}
    if not isinstance(hyp, dict):
        raise DataConfigError(f"{file}: expected a mapping of hyperparameters")
    bad = [k for k, v in hyp.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise DataConfigError(f"{file}: non-numeric hyperparameters: {bad}")
    return {str(k): v for k, v in hyp.items()}


def hyp_for(model: Any, hyp_file: PathLike | None = None) -> dict[str, int | float]:
    """``hyp_file`` if given, else the scratch recipe of the model's family (tiny, P6 or P5)."""
    if hyp_file:
        return load_hyp(hyp_file)
    name = str(model.cfg.get("name", ""))
    family = "tiny" if "tiny" in name else "p6" if model.heads[0].nl == 4 else "p5"
    return load_hyp(Path(__file__).resolve().parents[2] / "data" / f"hyp.scratch.{family}.yaml")
