"""A compact record of which images a model was trained on, and the overlap of another set with it.

A checkpoint cannot hold the names of 118k training images, but it can hold a *bottom-k sketch*:
each image gets a hash of its file name and size, and the record keeps the ``k`` smallest
hashes. An image of another set falls inside the sketch's hash range with the same chance
whether or not it was trained on, and if it was, its hash is in the sketch; so among the other
set's images whose hash is in range, the share found in the sketch estimates the share of the
whole set that was trained on (exactly, when the training set has at most ``k`` images).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

SKETCH_SIZE = 2048


def image_key(path: str | os.PathLike) -> int:
    """A 64-bit hash of an image's file name and byte size (the same file anywhere on disk)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        size = -1
    digest = hashlib.blake2b(f"{p.name}\0{size}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def image_set_record(files: Iterable[str | os.PathLike], k: int = SKETCH_SIZE) -> dict:
    """{'n': number of images, 'k': sketch size, 'sketch': the k smallest hashes as hex strings}."""
    keys = sorted({image_key(f) for f in files})
    return {"n": len(keys), "k": k, "sketch": [f"{h:016x}" for h in keys[:k]]}


def overlap_share(record: Mapping | None, files: Iterable[str | os.PathLike]) -> float | None:
    """Estimated share of ``files`` that are in the set ``record`` describes (None without a record
    or files)."""
    if not record or not record.get("sketch"):
        return None
    sketch = {int(h, 16) for h in record["sketch"]}
    full = int(record["n"]) <= len(sketch)
    limit = max(sketch)
    keys = [image_key(f) for f in files]
    in_range = keys if full else [h for h in keys if h <= limit]
    if not in_range:
        return None if not keys else 0.0
    return sum(h in sketch for h in in_range) / len(in_range)


def merge_records(record: Mapping, earlier: Mapping | None) -> dict:
    """The record of both sets (weights fine-tuned from ``earlier`` weights learned from both)."""
    if not earlier or not earlier.get("sketch"):
        return dict(record)
    k = max(int(record["k"]), int(earlier["k"]))
    a, b = ({int(h, 16) for h in r["sketch"]} for r in (record, earlier))
    union = sorted(a | b)
    both_full = all(int(r["n"]) <= len(r["sketch"]) for r in (record, earlier))
    n = len(union) if both_full else int(record["n"]) + int(earlier["n"]) - len(a & b)
    return {"n": n, "k": k, "sketch": [f"{h:016x}" for h in union[:k]]}
