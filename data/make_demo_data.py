"""Synthetic detection data with a controlled spread of difficulty (for demos and tests).

Four classes of filled shapes (circle, square, triangle, cross) are drawn on a background.
Each image gets a difficulty ``d`` in [0, 1] (spread evenly over each split) that drives:

* number of objects (1-2 when easy, up to about 12 when hard) and their size (large -> small);
* contrast between objects and background (strong -> faint);
* background (plain colour -> gradient, clutter lines and arcs, sensor noise, blur);
* occlusion (no overlap -> partial overlap and occluding strokes) and rotation of shapes;
* JPEG quality.

Layout written under ``root``: ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt`` (YOLO
format), ``demo.yaml`` (Ultralytics form with ``path``) and ``difficulty.json`` (per image
difficulty plus the factors it produced). Output is a pure function of the arguments.

CLI: ``python data/make_demo_data.py --root data/demo --n-train 200 --n-val 50``
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml

CLASSES = ("circle", "square", "triangle", "cross")
SPLIT_CODES = {"train": 0, "val": 1}
FILE_PREFIX = "demo_"
Obj = tuple[int, np.ndarray]  # (class id, pixel box x1 y1 x2 y2)


@dataclass(frozen=True)
class SceneParams:
    """How an image of a given difficulty is drawn."""

    difficulty: float
    n_objects: int
    size_frac: float  # typical object size as a fraction of the short image side
    contrast: float  # colour distance object <-> background (0-255 scale)
    noise: float  # std of additive Gaussian noise
    clutter: int  # number of background strokes
    occluders: int  # strokes drawn over the objects
    max_overlap: float  # allowed intersection over the smaller box between objects
    max_angle: float  # rotation range of polygons (degrees)
    blur: bool
    jpeg_quality: int


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def scene_params(d: float, rng: np.random.Generator) -> SceneParams:
    """Map a difficulty in [0, 1] to drawing parameters (with a little randomness)."""
    n_objects = int(np.clip(round(1 + 10 * d + rng.uniform(-1, 1)), 1, 12))
    return SceneParams(
        difficulty=float(d), n_objects=n_objects,
        size_frac=_lerp(0.42, 0.09, d) * rng.uniform(0.85, 1.15),
        contrast=_lerp(170, 22, d), noise=_lerp(0, 22, d) * rng.uniform(0.7, 1.3),
        clutter=int(round(_lerp(0, 40, d ** 1.2))), occluders=int(round(_lerp(0, 6, d ** 2))),
        max_overlap=_lerp(0.0, 0.45, d), max_angle=_lerp(0, 45, d),
        blur=bool(rng.random() < d * 0.6), jpeg_quality=int(round(_lerp(95, 55, d))))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(40, 215, 3)


def draw_background(h: int, w: int, p: SceneParams, rng: np.random.Generator) -> np.ndarray:
    """Plain colour, plus a gradient and clutter strokes that grow with difficulty."""
    base = _random_colour(rng)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    ramp = np.linspace(-1, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    ramp = ramp[None, :, None] if ramp.size == w else ramp[:, None, None]
    img += ramp * rng.uniform(-1, 1, 3).astype(np.float32) * 60 * p.difficulty
    img = img.clip(0, 255).astype(np.uint8)
    _draw_strokes(img, p.clutter, rng, base, p.contrast * 1.5)
    return img


def _draw_strokes(img: np.ndarray, n: int, rng: np.random.Generator, near: np.ndarray,
                  spread: float) -> None:
    """Thin random lines and arcs (never filled, so they don't look like objects)."""
    h, w = img.shape[:2]
    for _ in range(n):
        colour = tuple(float(c) for c in (near + rng.uniform(-spread, spread, 3)).clip(0, 255))
        thickness = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, colour, thickness, cv2.LINE_AA)
        else:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(4, max(5, w // 4))), int(rng.integers(4, max(5, h // 4))))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), start,
                        start + float(rng.uniform(40, 200)), colour, thickness, cv2.LINE_AA)


def _object_colour(bg: np.ndarray, contrast: float, rng: np.random.Generator) -> np.ndarray:
    """A colour about ``contrast`` away from ``bg``, moving away from the 0/255 limits."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    delta = direction * contrast
    flip = (bg + delta < 0) | (bg + delta > 255)
    delta[flip] *= -1
    return (bg + delta).clip(0, 255)


def shape_polygon(cls: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Outline points (k, 2) of square, triangle or cross of extent ``size``, rotated."""
    r = size / 2
    if cls == 1:
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * r * 0.8
    elif cls == 2:
        a = np.radians([-90, 30, 150])
        pts = np.stack((np.cos(a), np.sin(a) + 0.25), 1) * r
    else:
        t, o = 0.33, 1.0
        pts = np.array([[-t, -o], [t, -o], [t, -t], [o, -t], [o, t], [t, t], [t, o], [-t, o],
                        [-t, t], [-o, t], [-o, -t], [-t, -t]]) * r
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)


def draw_object(img: np.ndarray, cls: int, cx: float, cy: float, size: float, angle: float,
                colour: np.ndarray) -> np.ndarray:
    """Draw one filled shape; return its pixel box (x1, y1, x2, y2)."""
    col = tuple(float(c) for c in colour)
    if cls == 0:
        r = size / 2
        cv2.circle(img, (int(round(cx * 16)), int(round(cy * 16))), int(round(r * 16)), col, -1,
                   cv2.LINE_AA, shift=4)
        return np.array([cx - r, cy - r, cx + r, cy + r])
    pts = shape_polygon(cls, cx, cy, size, angle)
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], col, cv2.LINE_AA, shift=4)
    return np.concatenate((pts.min(0), pts.max(0)))


def _overlap(box: np.ndarray, boxes: list[np.ndarray]) -> float:
    """Largest intersection over the smaller box area between ``box`` and ``boxes``."""
    worst = 0.0
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            small = min((box[2] - box[0]) * (box[3] - box[1]),
                        (other[2] - other[0]) * (other[3] - other[1]))
            worst = max(worst, iw * ih / small)
    return worst


def _place(h: int, w: int, size: float, boxes: list[np.ndarray], max_overlap: float,
           rng: np.random.Generator, tries: int = 30) -> tuple[float, float] | None:
    """A centre for an object of ``size`` inside the image respecting ``max_overlap``."""
    half = size / 2 + 1
    if 2 * half >= min(h, w):
        return None
    for _ in range(tries):
        cx, cy = rng.uniform(half, w - half), rng.uniform(half, h - half)
        if _overlap(np.array([cx - half, cy - half, cx + half, cy + half]), boxes) <= max_overlap:
            return float(cx), float(cy)
    return None


def render_image(h: int, w: int, p: SceneParams, rng: np.random.Generator,
                 noise_bank: np.ndarray | None = None) -> tuple[np.ndarray, list[Obj]]:
    """Draw one scene; return the BGR image and [(class, pixel box), ...].

    ``noise_bank`` is a large standard-normal array to crop noise from (drawn here if None).
    """
    img = draw_background(h, w, p, rng)
    objects: list[Obj] = []
    boxes: list[np.ndarray] = []
    for _ in range(p.n_objects):
        size = max(8.0, p.size_frac * min(h, w) * rng.uniform(0.75, 1.25))
        centre = _place(h, w, size, boxes, p.max_overlap, rng)
        if centre is None:
            continue
        cls = int(rng.integers(0, len(CLASSES)))
        local_bg = img[int(centre[1]), int(centre[0])].astype(np.float64)
        colour = _object_colour(local_bg, p.contrast * rng.uniform(0.85, 1.15), rng)
        angle = float(rng.uniform(-p.max_angle, p.max_angle))
        box = draw_object(img, cls, centre[0], centre[1], size, angle, colour)
        boxes.append(np.array([centre[0] - size / 2, centre[1] - size / 2,
                               centre[0] + size / 2, centre[1] + size / 2]))
        objects.append((cls, box))
    _draw_strokes(img, p.occluders, rng, np.array(cv2.mean(img)[:3]), p.contrast)
    return _degrade(img, p, rng, noise_bank), objects


def _degrade(img: np.ndarray, p: SceneParams, rng: np.random.Generator,
             noise_bank: np.ndarray | None) -> np.ndarray:
    """Blur and add Gaussian noise (a random crop of ``noise_bank`` when it is big enough)."""
    if p.blur:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    if p.noise <= 0:
        return img
    h, w = img.shape[:2]
    if noise_bank is None or noise_bank.shape[0] < h or noise_bank.shape[1] < w:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
    else:
        y = int(rng.integers(0, noise_bank.shape[0] - h + 1))
        x = int(rng.integers(0, noise_bank.shape[1] - w + 1))
        noise = noise_bank[y:y + h, x:x + w]
    return cv2.add(img, noise * np.float32(p.noise), dtype=cv2.CV_8U)


def yolo_lines(objects: Sequence[Obj], h: int, w: int) -> list[str]:
    """YOLO label lines "cls cx cy w h" (normalised) for pixel boxes clipped to the image."""
    lines = []
    for cls, box in objects:
        x1, x2 = np.clip(box[[0, 2]], 0, w)
        y1, y2 = np.clip(box[[1, 3]], 0, h)
        lines.append(f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                     f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return lines


def _image_hw(img_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Mostly square images, some landscape/portrait (sides multiples of 8)."""
    short = int(round(img_size * rng.choice([1.0, 1.0, 0.75, 0.625]) / 8)) * 8
    return (short, img_size) if rng.random() < 0.7 else (img_size, short)


def _clear_split(root: Path, split: str) -> tuple[Path, Path]:
    """Create the split folders and remove files a previous run of this script wrote."""
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    for folder, pattern in ((img_dir, "*.jpg"), (lbl_dir, "*.txt")):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(FILE_PREFIX + pattern):
            old.unlink()
    return img_dir, lbl_dir


def make_split(root: Path, split: str, n: int, img_size: int, seed: int,
               max_difficulty: float = 1.0) -> dict[str, dict]:
    """Write ``n`` images and labels of one split (difficulties spread over [0, max_difficulty])."""
    img_dir, lbl_dir = _clear_split(root, split)
    code = SPLIT_CODES[split]
    spread = np.random.default_rng([seed, code])
    difficulties = spread.permutation((np.arange(n) + spread.uniform(size=n)) / max(n, 1)) * max_difficulty
    noise_bank = spread.standard_normal((2 * img_size, 2 * img_size, 3), dtype=np.float32)
    details = {}
    for i, d in enumerate(difficulties):
        rng = np.random.default_rng([seed, code, i])
        p = scene_params(float(d), rng)
        h, w = _image_hw(img_size, rng)
        img, objects = render_image(h, w, p, rng, noise_bank)
        name = f"{FILE_PREFIX}{split}_{i:05d}"
        cv2.imwrite(str(img_dir / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, p.jpeg_quality])
        (lbl_dir / f"{name}.txt").write_text("\n".join(yolo_lines(objects, h, w)) + "\n")
        details[f"images/{split}/{name}.jpg"] = {**asdict(p), "n_objects": len(objects)}
    return details


def make_demo_dataset(root: str | Path = "data/demo", n_train: int = 200, n_val: int = 50,
                      img_size: int = 256, seed: int = 0, max_difficulty: float = 1.0) -> Path:
    """Generate the demo dataset under ``root``; return the path of its ``demo.yaml``.

    ``max_difficulty`` < 1 keeps only the easier part of the spectrum (quick learning checks).
    """
    if img_size < 64:
        raise ValueError(f"img_size must be at least 64, got {img_size}")
    if not 0 < max_difficulty <= 1:
        raise ValueError(f"max_difficulty must be in (0, 1], got {max_difficulty}")
    root = Path(root).expanduser().resolve()
    details = {}
    for split, n in (("train", n_train), ("val", n_val)):
        details.update(make_split(root, split, n, img_size, seed, max_difficulty))
    side = {"seed": seed, "img_size": img_size, "classes": list(CLASSES),
            "difficulty": {k: round(v["difficulty"], 6) for k, v in details.items()},
            "details": details}
    (root / "difficulty.json").write_text(json.dumps(side, indent=1))
    data_yaml = root / "demo.yaml"
    config = {"path": str(root), "train": "images/train", "val": "images/val",
              "names": dict(enumerate(CLASSES))}
    data_yaml.write_text("# Synthetic demo dataset written by data/make_demo_data.py\n"
                         + yaml.safe_dump(config, sort_keys=False))
    return data_yaml


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/demo", help="output folder")
    parser.add_argument("--n-train", type=int, default=200, help="training images")
    parser.add_argument("--n-val", type=int, default=50, help="validation images")
    parser.add_argument("--img-size", type=int, default=256, help="long image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--max-difficulty", type=float, default=1.0, help="upper end of the difficulty spread")
    args = parser.parse_args(argv)
    path = make_demo_dataset(args.root, args.n_train, args.n_val, args.img_size, args.seed, args.max_difficulty)
    print(f"demo dataset written: {path}")
    return path


if __name__ == "__main__":
    main()
