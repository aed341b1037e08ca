"""The 1000 ImageNet-1k classes: WordNet ids (wnids) and names, in model class order.

Class index `i` is the position of the wnid in the sorted list of the 1000 ILSVRC2012
wnids. The tensorflow/tpu `imagenet_to_gcs` TFRecords store `i + 1` as `image/class/label`.
Both lists ship as package data (`converter/data/imagenet_wnids.txt` and
`imagenet_class_names.txt`, one entry a line, the same order).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

NUM_CLASSES = 1000
# ImageNet results give top-1 and top-K accuracy with K = 5.
TOP_K = 5
# imagenet_to_gcs writes labels 1..1000; class index = label - LABEL_OFFSET.
LABEL_OFFSET = 1
WNID_PATTERN = re.compile(r"^n\d{8}$")

_WNIDS_FILE = "imagenet_wnids.txt"
_NAMES_FILE = "imagenet_class_names.txt"


def _read_lines(name: str) -> tuple[str, ...]:
    text = resources.files("converter").joinpath("data", name).read_text(encoding="utf-8")
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(lines) != NUM_CLASSES:
        raise RuntimeError(f"Package data file {name} has {len(lines)} entries, "
                           f"expected {NUM_CLASSES}; reinstall rsconvert.")
    return lines


@functools.cache
def wnids() -> tuple[str, ...]:
    """Return the 1000 ImageNet wnids in class-index order (sorted)."""
    return _read_lines(_WNIDS_FILE)


@functools.cache
def class_names() -> tuple[str, ...]:
    """Return the 1000 class names (comma-separated WordNet lemmas) in class-index order."""
    return _read_lines(_NAMES_FILE)


@functools.cache
def _index_by_wnid() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(wnids())}


def is_imagenet_wnid(wnid: str) -> bool:
    return wnid in _index_by_wnid()


def class_index(wnid: str) -> int:
    """Return the class index of an ImageNet-1k wnid; raise KeyError for any other string."""
    return _index_by_wnid()[wnid]
