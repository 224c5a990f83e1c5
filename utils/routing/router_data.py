"""Which images the router learns from, and whether the detectors already learned from them.

The router predicts how much detector 2 gains on an image. On the detectors' own training images
both detectors fit the labels better than they will on new images, and the gain the router sees
there is not the gain it will meet, so a router trained on them learns little that carries over.
A data YAML may therefore name a ``router:`` split of images held out from stage 1; without one
the ``train`` split is used, and :func:`seen_warning` says in one line when those are images
the detectors were trained on (the checkpoint's ``trained_on`` record, see
:mod:`utils.data.image_set`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from utils.data.config import DataConfig
from utils.data.image_set import image_set_record, overlap_share

SEEN_LIMIT = 0.5  # warn when at least this share of the router's images trained the detectors


def router_split(data: DataConfig) -> tuple[list[Path], str]:
    """The router's training sources and the split's name: ``router`` when the YAML has one, else ``train``."""
    return (data.router, "router") if data.router else (data.train, "train")


def seen_warning(detector_meta: Mapping | None, files: Iterable, split: str, data_file: str) -> str | None:
    """One line when most of ``files`` are images the detectors learned from (None otherwise or unknown)."""
    share = overlap_share((detector_meta or {}).get("trained_on"), files)
    if share is None or share < SEEN_LIMIT:
        return None
    return (f"warning: {100 * share:.0f}% of the router's training images ({split} split of {data_file}) are images "
            "the detectors were trained on; there both detectors fit better than on new images, so the router learns "
            "gains it will not meet: add a 'router:' split of held-out labelled images to the data YAML")


def lineage(detector_meta: Mapping | None, router_files: Iterable) -> dict:
    """Meta entries a router checkpoint carries: the detectors' training record and the router's own."""
    out = {"router_trained_on": image_set_record(router_files)}
    if detector_meta and detector_meta.get("trained_on"):
        out["trained_on"] = detector_meta["trained_on"]
    return out
