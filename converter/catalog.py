"""The catalog of official variants with their download URLs and local state.

`rsconvert list` imports this module, so it must not import TensorFlow or numpy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from converter.archive import is_checkpoint_dir
from converter.variants import VARIANTS, checkpoints_root


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One official variant with its download URL and local state."""

    name: str
    depth: int
    image_size: int
    official_top1: float
    url: str
    path: Path
    downloaded: bool

    def to_dict(self) -> dict:
        row = dataclasses.asdict(self)
        row["path"] = str(self.path)
        return row


def catalog_entries(root: Path | None = None, base_url: str | None = None) -> list[CatalogEntry]:
    """List the official variants and whether each is already downloaded under `root`."""
    root = Path(root) if root is not None else checkpoints_root()
    entries = []
    for variant in VARIANTS:
        path = variant.default_checkpoint_dir(root)
        entries.append(CatalogEntry(
            name=variant.name,
            depth=variant.depth,
            image_size=variant.image_size,
            official_top1=variant.official_top1,
            url=variant.url(base_url),
            path=path,
            downloaded=is_checkpoint_dir(path),
        ))
    return entries
