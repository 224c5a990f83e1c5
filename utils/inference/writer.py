"""Saving detection results: annotated images and videos, YOLO label files, result windows.

detect.py writes every :class:`~utils.inference.results.Result` of a run through one
:class:`ResultWriter`, which names files after their source (streams and webcams included) and
keeps one video writer per video file or stream.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import cv2

from utils.data.images import write_image
from utils.inference.results import Result, safe_stem

LOGGER = logging.getLogger("dydet.detect")
WRITABLE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})


def display_available() -> bool:
    """Whether a window can be opened (an X/Wayland display on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class ResultWriter:
    """Writes annotated images, videos (one per video file or stream), YOLO label files and crops."""

    def __init__(self, save_dir: Path, save_img: bool = True, save_txt: bool = False, save_conf: bool = False,
                 view_img: bool = False, line_width: int | None = None, save_crop: bool = False) -> None:
        self.save_dir, self.save_img, self.save_txt, self.save_conf = save_dir, save_img, save_txt, save_conf
        self.line_width, self.save_crop = line_width, save_crop
        self.view_img = view_img and self._can_view()
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.saved: list[Path] = []
        self.n_labels = 0
        self._last_path: str | None = None
        self.quit = False  # set when 'q' is pressed in a result window

    @staticmethod
    def _can_view() -> bool:
        if display_available():
            return True
        LOGGER.warning("--view-img: no display found, not showing results")
        return False

    def write(self, r: Result) -> None:
        annotated = r.plot(self.line_width) if (self.save_img or self.view_img) else None
        if self.save_txt:
            r.to_txt(self.save_dir / "labels" / f"{r.stem}.txt", self.save_conf)
            self.n_labels += 1
        if self.save_crop:
            r.save_crop(self.save_dir / "crops", r.stem)
        if self.save_img:
            self._save(r, annotated)
        if self.view_img:
            self._show(r.path, annotated)

    def _save(self, r: Result, img) -> None:
        if r.frame is None:
            suffix = Path(r.path).suffix.lower()
            name = Path(r.path).name if suffix in WRITABLE_SUFFIXES else f"{safe_stem(r.path)}.jpg"
            self.saved.append(write_image(self.save_dir / name, img))
            return
        if r.path != self._last_path:
            self._release_finished_file()
            self._last_path = r.path
        if r.path not in self.writers:
            self.writers[r.path] = self._open_writer(r, img.shape)
        self.writers[r.path].write(img)

    def _open_writer(self, r: Result, shape) -> cv2.VideoWriter:
        path = self.save_dir / f"{safe_stem(r.path)}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), r.fps or 30.0, (shape[1], shape[0]))
        if not writer.isOpened():
            raise RuntimeError(f"cannot write video {path}")
        self.saved.append(path)
        return writer

    def _release_finished_file(self) -> None:
        """A video file's frames come in one run: its writer can close when another path starts."""
        last = self._last_path
        if last is not None and last in self.writers and os.path.isfile(last):
            self.writers.pop(last).release()

    def _show(self, path: str, img) -> None:
        try:
            cv2.imshow(path, img)
            self.quit = cv2.waitKey(1) & 0xFF == ord("q")
        except cv2.error as e:
            LOGGER.warning("--view-img: cannot open a window (%s), not showing results", str(e).strip().splitlines()[-1])
            self.view_img = False

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        self.writers.clear()
        if self.view_img:
            cv2.destroyAllWindows()
