"""Detections of one image or video frame, with its route, and how to draw and save them."""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.boxes import xyxy2xywhn
from utils.data.config import names_list
from utils.data.images import write_image
from utils.inference.drawing import draw_detections

__all__ = ["Result", "safe_stem"]


def safe_stem(path: str) -> str:
    """A file-name stem for a result path (URLs and webcam labels included)."""
    p = Path(path)
    stem = p.stem if p.suffix else p.name
    if "://" in path or not stem:
        stem = re.sub(r"[^\w.-]+", "_", path.split("://", 1)[-1]).strip("_")
    return stem or "stream"


@dataclass(repr=False)
class Result:
    """Detections of one image in original-image pixels.

    ``boxes`` (n, 4) xyxy float32, ``scores`` (n,), ``classes`` (n,) int; ``route`` is 'easy' or
    'hard' for dynamic models (None for plain ones) and ``phi`` the router's difficulty score;
    ``speed`` holds this image's share of its batch's 'pre' (pre-process), 'infer' (inference)
    and 'nms' milliseconds. ``frame`` and ``fps`` are set for video and stream frames.
    """

    path: str
    orig_img: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    names: list[str]
    route: str | None = None
    phi: float | None = None
    speed: dict[str, float] = field(default_factory=dict)
    frame: int | None = None
    fps: float | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.classes = np.asarray(self.classes).reshape(-1).astype(np.int64)
        self.names = names_list(self.names)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def stem(self) -> str:
        """File-name stem for this result's outputs: the source's stem, plus ``_<frame>`` for frames."""
        return safe_stem(self.path) + ("" if self.frame is None else f"_{self.frame}")

    @property
    def caption(self) -> str | None:
        """'easy φ=0.12' / 'hard φ=0.87' for routed images, else None."""
        if self.route is None:
            return None
        return self.route if self.phi is None else f"{self.route} φ={self.phi:.2f}"

    def counts(self) -> dict[str, int]:
        """Detections per class name, most frequent first."""
        return dict(Counter(self._name(c) for c in self.classes).most_common())

    def _name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    def plot(self, line_width: int | None = None, caption: bool = True) -> np.ndarray:
        """Annotated BGR copy of the original image (boxes, 'name score' tags, route caption)."""
        return draw_detections(self.orig_img, self.boxes, self.scores, self.classes, self.names,
                               self.caption if caption else None, line_width)

    def save(self, path: str | Path, line_width: int | None = None) -> Path:
        """Write :meth:`plot` to ``path`` (format from the suffix)."""
        return write_image(path, self.plot(line_width))

    def save_crop(self, save_dir: str | Path, file_name: str | None = None) -> list[Path]:
        """Write each detection's box cut from the original image to ``save_dir/<class>/<name>.jpg``.

        ``file_name`` defaults to :attr:`stem`; the k-th box of a class gets ``_<k>`` from the
        second one on. Returns the written paths.
        """
        stem = file_name or self.stem
        h, w = self.orig_img.shape[:2]
        seen: Counter = Counter()
        paths = []
        for box, c in zip(self.boxes, self.classes):
            x1, y1, x2, y2 = np.clip(np.round(box), 0, [w, h, w, h]).astype(int)
            if x2 <= x1 or y2 <= y1:
                continue
            name = self._name(int(c))
            k = seen[name]
            seen[name] += 1
            out = Path(save_dir) / name / f"{stem}{'' if k == 0 else f'_{k}'}.jpg"
            paths.append(write_image(out, self.orig_img[y1:y2, x1:x2]))
        return paths

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per detection: class id and name, score, box (x1, y1, x2, y2 pixels)."""
        return [{"class": int(c), "name": self._name(int(c)), "score": float(s),
                 "box": {k: float(v) for k, v in zip(("x1", "y1", "x2", "y2"), b)}}
                for b, s, c in zip(self.boxes, self.scores, self.classes)]

    def to_json(self, indent: int | None = None) -> str:
        """The result as JSON: the image, its route and φ, speed (ms) and every detection."""
        h, w = self.orig_img.shape[:2]
        return json.dumps({"path": self.path, "frame": self.frame, "shape": [h, w], "route": self.route,
                           "phi": self.phi, "speed": self.speed, "detections": self.records()}, indent=indent)

    def to_df(self):
        """The detections as a pandas DataFrame (columns class, name, score, x1, y1, x2, y2,
        route, phi); needs pandas, which is optional."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Result.to_df needs pandas: pip install pandas") from None
        rows = [{"class": d["class"], "name": d["name"], "score": d["score"], **d["box"]} for d in self.records()]
        columns = ["class", "name", "score", "x1", "y1", "x2", "y2"]
        return pd.DataFrame(rows, columns=columns).assign(route=self.route, phi=self.phi)

    def to_txt(self, path: str | Path, save_conf: bool = False) -> Path:
        """Write YOLO labels ``cls cx cy w h [conf]`` normalised to [0, 1] (an empty file if none)."""
        h, w = self.orig_img.shape[:2]
        xywhn = xyxy2xywhn(self.boxes, w, h)
        lines = []
        for c, box, s in zip(self.classes, xywhn, self.scores):
            values = " ".join(f"{v:.6f}" for v in box)
            lines.append(f"{c} {values} {s:.6f}" if save_conf else f"{c} {values}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    def __repr__(self) -> str:
        found = ", ".join(f"{n} {k}" for k, n in self.counts().items()) or "no detections"
        where = self.path if self.frame is None else f"{self.path}#{self.frame}"
        parts = [f"{where!r}", f"{len(self)} boxes ({found})" if len(self) else found]
        if self.caption:
            parts.append(self.caption)
        if self.speed:
            parts.append(f"{sum(self.speed.values()):.1f} ms")
        return f"Result({'; '.join(parts)})"
