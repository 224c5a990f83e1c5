"""YOLO-format detection datasets: loading, augmentation and batching.

The pipeline is: :func:`utils.data.config.find_images` -> :func:`utils.data.labels.scan_dataset`
(checks every image and label once, see :mod:`utils.data.labels`) -> :class:`YoloDataset`
(loading + augmentation) -> :func:`collate_fn` -> :func:`create_dataloader`.
"""
from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from tqdm import tqdm

from utils.boxes import clip_boxes, xywhn2xyxy, xyxy2xywhn
from utils.data.augment import (
    PAD_VALUE,
    AugmentConfig,
    augment_hsv,
    flip_lr,
    flip_ud,
    letterbox,
    mixup,
    mosaic4,
    random_perspective,
)
from utils.data.config import PathLike, find_images, image_to_label_path
from utils.data.images import ImageReadError, read_image
from utils.data.labels import Sample, scan_dataset

LOGGER = logging.getLogger(__name__)

__all__ = ["rect_batch_shapes", "YoloDataset", "collate_fn", "seed_worker", "create_dataloader"]


# --------------------------------------------------------------------------- rectangles
def rect_batch_shapes(shapes_hw: np.ndarray, batch_size: int, img_size: int, stride: int,
                      pad: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes for rectangular (minimal padding) batches.

    Images are ordered by aspect ratio h/w; each batch gets the (h, w) that fits its most
    extreme image at ``img_size`` on the long side, rounded up to a multiple of ``stride``
    after adding ``pad`` strides. Returns (order, batch_shapes (nb, 2) as (h, w), batch index
    per ordered image).
    """
    aspect = shapes_hw[:, 0] / shapes_hw[:, 1]
    order = np.argsort(aspect, kind="stable")
    aspect = aspect[order]
    batch_index = np.arange(len(order)) // batch_size
    n_batches = int(batch_index[-1]) + 1
    rel = np.ones((n_batches, 2))
    for b in range(n_batches):
        ar = aspect[batch_index == b]
        if ar.max() < 1:
            rel[b] = (ar.max(), 1.0)  # all landscape: full width, tallest height
        elif ar.min() > 1:
            rel[b] = (1.0, 1.0 / ar.min())  # all portrait: full height, widest width
    shapes = np.ceil(rel * img_size / stride + pad).astype(int) * stride
    return order, shapes, batch_index


# --------------------------------------------------------------------------- dataset
class YoloDataset(Dataset):
    """Images and YOLO labels with optional mosaic/mixup/perspective/HSV/flip augmentation.

    Each item is ``(img, labels, path, shapes)``: ``img`` a CHW ``uint8`` RGB tensor,
    ``labels`` an ``(n, 6)`` tensor ``[0, cls, cx, cy, w, h]`` (normalised), ``path`` a str and
    ``shapes`` = ``((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))`` to map predictions back to
    the original image (None for mosaic samples).

    Attributes: ``im_files``, ``labels`` (normalised ``[cls, cx, cy, w, h]`` arrays),
    ``shapes`` ((n, 2) original sizes as **(h, w)**), ``report`` (:class:`DataReport`).
    """

    def __init__(self, path: PathLike | Sequence[PathLike], img_size: int = 640,
                 batch_size: int = 16, augment: bool = False, hyp: Mapping[str, Any] | None = None,
                 rect: bool = False, stride: int = 32, pad: float = 0.0,
                 cache_images: bool | str = False, nc: int | None = None, prefix: str = "",
                 cache_dir: PathLike | None = None, root: PathLike | None = None, seed: int = 0):
        sources = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        samples, self.report = scan_dataset(find_images(sources, root), nc, sources, cache_dir,
                                            prefix)
        self.img_size, self.stride, self.augment, self.rect = img_size, stride, augment, rect
        self.aug = AugmentConfig.from_hyp(hyp) if augment else AugmentConfig()
        self.mosaic = augment and not rect and self.aug.mosaic > 0
        self.prefix = prefix
        self.batch_shapes: np.ndarray | None = None
        self.batch_index: np.ndarray | None = None
        self._set_samples(samples, batch_size, pad)
        self.rng = np.random.default_rng(seed)
        self.imgs: list[np.ndarray | None] = [None] * len(self.im_files)
        if cache_images:
            self._cache_images(cache_images)

    def _set_samples(self, samples: list[Sample], batch_size: int, pad: float) -> None:
        shapes = np.array([s.shape for s in samples], dtype=np.int64).reshape(-1, 2)
        if self.rect:
            order, self.batch_shapes, self.batch_index = rect_batch_shapes(
                shapes, batch_size, self.img_size, self.stride, pad)
            samples, shapes = [samples[i] for i in order], shapes[order]
        self.im_files = [s.im_file for s in samples]
        self.label_files = [str(image_to_label_path(f)) for f in self.im_files]
        self.labels = [s.labels for s in samples]
        self.shapes = shapes

    def _cache_images(self, mode: bool | str) -> None:
        if mode not in (True, "ram"):
            raise ValueError(f"cache_images must be False, True or 'ram', got {mode!r}")
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            loaded = pool.map(self._resize_loaded, range(len(self)))
            for i, img in enumerate(tqdm(loaded, total=len(self), leave=False,
                                         desc=f"{self.prefix}caching images")):
                self.imgs[i] = img
        gb = sum(im.nbytes for im in self.imgs if im is not None) / 1e9
        LOGGER.info("%scached %d images in RAM (%.2f GB)", self.prefix, len(self), gb)

    @property
    def shapes_wh(self) -> np.ndarray:
        """Original image sizes as (w, h) per image (the order YOLO anchor checks expect)."""
        return self.shapes[:, ::-1].copy()

    def reseed(self, seed: int) -> None:
        """Reset the augmentation random generator (called in each dataloader worker)."""
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.im_files)

    # ---- loading
    def _resize_loaded(self, index: int) -> np.ndarray:
        """Read image ``index`` and resize it so its long side is ``img_size``."""
        img = read_image(self.im_files[index])
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            shrink = r < 1 and not self.augment
            interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            img = cv2.resize(img, (max(1, round(w0 * r)), max(1, round(h0 * r))),
                             interpolation=interp)
        return img

    def load_image(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Resized BGR image, its original (h0, w0) and its resized (h, w)."""
        img = self.imgs[index]
        if img is None:
            img = self._resize_loaded(index)
        h0, w0 = (int(v) for v in self.shapes[index])
        return img, (h0, w0), img.shape[:2]

    def _load_letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        img, (h0, w0), (h, w) = self.load_image(index)
        target = self.batch_shapes[self.batch_index[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, target, auto=False, scaleup=self.augment)
        labels = self.labels[index]
        pixels = np.zeros((len(labels), 5), dtype=np.float32)
        if len(labels):
            pixels[:, 0] = labels[:, 0]
            pixels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[1] * w, ratio[0] * h, pad[0], pad[1])
        shapes = ((h0, w0), ((ratio[0] * h / h0, ratio[1] * w / w0), pad))
        return img, pixels, shapes

    def _load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        indices = [index, *self.rng.integers(0, len(self), 3)]
        images = [self.load_image(int(i))[0] for i in indices]
        canvas, labels = mosaic4(images, [self.labels[int(i)] for i in indices], self.img_size,
                                 self.rng)
        border = (-self.img_size // 2, -self.img_size // 2)
        return self._perspective(canvas, labels, border)

    def _perspective(self, img: np.ndarray, labels: np.ndarray,
                     border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
        a = self.aug
        return random_perspective(img, labels, a.degrees, a.translate, a.scale, a.shear,
                                  a.perspective, border, self.rng)

    # ---- items
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        for _ in range(len(self)):
            try:
                return self._get(index)
            except ImageReadError as e:  # the file changed after scanning: use another image
                LOGGER.warning("%s%s; using another image instead", self.prefix, e)
                index = (index + 1) % len(self)
        raise ImageReadError(f"{self.prefix}no readable image left in the dataset")

    def _get(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        if self.mosaic and self.rng.random() < self.aug.mosaic:
            img, labels = self._load_mosaic(index)
            shapes = None
            if self.rng.random() < self.aug.mixup:
                other = self._load_mosaic(int(self.rng.integers(0, len(self))))
                img, labels = mixup(img, labels, *other, rng=self.rng)
        else:
            img, labels, shapes = self._load_letterboxed(index)
            if self.augment:
                img, labels = self._perspective(img, labels)
        img, labels = self._photometric_and_flips(img, labels)
        return (*self._to_tensors(img, labels), self.im_files[index], shapes)

    def _photometric_and_flips(self, img: np.ndarray,
                               pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HSV jitter and flips; turns pixel xyxy labels into normalised xywh labels."""
        a = self.aug
        if self.augment:
            augment_hsv(img, a.hsv_h, a.hsv_s, a.hsv_v, self.rng)
        labels = np.zeros((len(pixels), 5), dtype=np.float32)
        if len(pixels):
            h, w = img.shape[:2]
            labels[:, 0] = pixels[:, 0]
            labels[:, 1:] = xyxy2xywhn(clip_boxes(pixels[:, 1:5].copy(), (h, w)), w, h)
        if self.augment and self.rng.random() < a.flipud:
            img, labels = flip_ud(img, labels)
        if self.augment and self.rng.random() < a.fliplr:
            img, labels = flip_lr(img, labels)
        return img, labels

    @staticmethod
    def _to_tensors(img: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        out = torch.zeros((len(labels), 6), dtype=torch.float32)
        if len(labels):
            out[:, 1:] = torch.from_numpy(labels.astype(np.float32))
        return torch.from_numpy(chw), out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, img_size={self.img_size}, "
                f"augment={self.augment}, rect={self.rect})")


# --------------------------------------------------------------------------- batching
def _pad_item(img: torch.Tensor, labels: torch.Tensor,
              hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad an image on the right/bottom to ``hw`` and renormalise its labels accordingly."""
    h, w = img.shape[1:]
    if (h, w) == tuple(hw):
        return img, labels
    out = img.new_full((img.shape[0], *hw), PAD_VALUE)
    out[:, :h, :w] = img
    labels = labels.clone()
    labels[:, [2, 4]] *= w / hw[1]
    labels[:, [3, 5]] *= h / hw[0]
    return out, labels


def collate_fn(batch: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """Stack images (padding unequal sizes) and concatenate labels, setting column 0 to the
    image's index in the batch. Returns (imgs (B,3,H,W) uint8, labels (N,6), paths, shapes)."""
    imgs, labels, paths, shapes = zip(*batch)
    hw = (max(im.shape[1] for im in imgs), max(im.shape[2] for im in imgs))
    items = [_pad_item(im, lab, hw) for im, lab in zip(imgs, labels)]
    out_labels = [lab.clone() for _, lab in items]
    for i, lab in enumerate(out_labels):
        lab[:, 0] = i
    return torch.stack([im for im, _ in items]), torch.cat(out_labels, 0), paths, shapes


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy, random and the dataset's generator from torch's seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


def create_dataloader(path: PathLike | Sequence[PathLike], img_size: int, batch_size: int,
                      stride: int, hyp: Mapping[str, Any] | None = None, augment: bool = False,
                      rect: bool = False, cache_images: bool | str = False, workers: int = 8,
                      pad: float = 0.0, prefix: str = "", rank: int = -1, world_size: int = 1,
                      shuffle: bool = False, seed: int = 0, nc: int | None = None,
                      cache_dir: PathLike | None = None,
                      root: PathLike | None = None) -> tuple[DataLoader, YoloDataset]:
    """Build a :class:`YoloDataset` and a deterministic ``DataLoader`` over it.

    ``batch_size`` is per process. With ``rank >= 0`` a ``DistributedSampler`` over
    ``world_size`` processes is used. ``rect`` implies no shuffling. ``nc`` enables the class
    range check. Returns (loader, dataset).
    """
    if img_size % stride:
        raise ValueError(f"img_size {img_size} must be a multiple of the stride {stride}")
    if rect and shuffle:
        LOGGER.warning("%srect=True is incompatible with shuffle; shuffle disabled", prefix)
        shuffle = False
    dataset = YoloDataset(path, img_size, batch_size, augment, hyp, rect, stride, pad,
                          cache_images, nc, prefix, cache_dir, root, seed + max(rank, 0))
    sampler = None
    if rank >= 0:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    n_workers = max(0, min(workers, os.cpu_count() or 1))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                        sampler=sampler, num_workers=n_workers, collate_fn=collate_fn,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=seed_worker,
                        generator=generator, persistent_workers=n_workers > 0)
    return loader, dataset
