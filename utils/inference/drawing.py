"""Drawing detections on images: class colours, text (ASCII and Unicode such as 'φ') and boxes.

What a :class:`utils.inference.results.Result` draws, and what the evaluation plots reuse. Images
are ``HxWx3`` ``uint8`` BGR.
"""
from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Union

import cv2
import numpy as np
import torch

from utils.data.config import names_list

if TYPE_CHECKING:
    from utils.data.config import Names

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


def class_color(i: int, bgr: bool = True) -> tuple[int, int, int]:
    """Deterministic colour for class ``i``: hues walk the circle by the golden ratio."""
    hue = (int(i) * 0.618033988749895) % 1.0
    saturation = 0.85 if int(i) % 2 == 0 else 0.6
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.95)
    rgb = (int(r * 255), int(g * 255), int(b * 255))
    return rgb[::-1] if bgr else rgb


@lru_cache(maxsize=8)
def _unicode_font(size: int):
    """DejaVu Sans (shipped with matplotlib) as a Pillow font, for text OpenCV cannot draw."""
    import matplotlib
    from PIL import ImageFont

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(font), size)


def put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float,
             color: tuple[int, int, int] = (255, 255, 255),
             background: tuple[int, int, int] | None = None) -> tuple[int, int]:
    """Draw ``text`` with its top-left corner at ``org`` (in place); return its (w, h).

    ASCII goes through OpenCV; anything else (e.g. 'φ') through Pillow with DejaVu Sans.
    """
    if text.isascii():
        return _put_text_cv2(img, text, org, scale, color, background)
    return _put_text_pil(img, text, org, scale, color, background)


def _put_text_cv2(img, text, org, scale, color, background) -> tuple[int, int]:
    thickness = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    if background is not None:
        cv2.rectangle(img, (x, y), (x + w + 4, y + h + base + 4), background, -1)
    cv2.putText(img, text, (x + 2, y + h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness,
                cv2.LINE_AA)
    return w + 4, h + base + 4


def _put_text_pil(img, text, org, scale, color, background) -> tuple[int, int]:
    from PIL import Image, ImageDraw

    font = _unicode_font(max(8, round(scale * 32)))
    pil = Image.fromarray(img[..., ::-1])
    draw = ImageDraw.Draw(pil)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x, y = org
    if background is not None:
        draw.rectangle((x, y, x + w, y + h), fill=tuple(background[::-1]))
    draw.text((x + 2 - left, y + 2 - top), text, font=font, fill=tuple(color[::-1]))
    img[:] = np.asarray(pil)[..., ::-1]
    return w, h


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on the BGR colour ``bg`` (by luma)."""
    b, g, r = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def draw_box(img: np.ndarray, xyxy: Sequence[float], cls: int, label: str | None,
             line_width: int, font_scale: float) -> None:
    """Box outline in the class colour plus a filled label tag above (or inside) it, in place."""
    color = class_color(cls)
    x1, y1, x2, y2 = (int(round(v)) for v in xyxy)
    cv2.rectangle(img, (x1, y1), (x2, y2), color, line_width, cv2.LINE_AA)
    if not label:
        return
    thickness = max(1, round(font_scale * 2))
    (_, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    top = y1 - h - base - 4 if y1 - h - base - 4 >= 0 else y1
    put_text(img, label, (x1, top), font_scale, _text_color(color), color)


def line_style(h: int, w: int) -> tuple[int, float]:
    """Line width and font scale that suit an image of this size."""
    side = max(h, w)
    return max(1, round(side / 400)), max(0.35, side / 1600)


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def draw_detections(img_bgr: np.ndarray, boxes_xyxy: ArrayLike, scores: ArrayLike,
                    classes: ArrayLike, names: Names, caption: str | None = None,
                    line_width: int | None = None) -> np.ndarray:
    """Annotated copy of ``img_bgr``: one box and 'name score' tag per detection.

    ``caption`` (e.g. 'hard φ=0.73') is written on a dark strip in the top-left corner.
    """
    out = np.ascontiguousarray(img_bgr).copy()
    lw, fs = line_style(*out.shape[:2])
    lw = line_width or lw
    label_names = names_list(names)
    boxes = _numpy(boxes_xyxy).reshape(-1, 4)
    for box, score, cls in zip(boxes, _numpy(scores).reshape(-1), _numpy(classes).reshape(-1)):
        c = int(cls)
        name = label_names[c] if 0 <= c < len(label_names) else str(c)
        draw_box(out, box, c, f"{name} {float(score):.2f}", lw, fs)
    if caption:
        put_text(out, caption, (0, 0), fs * 1.3, (255, 255, 255), (40, 40, 40))
    return out
