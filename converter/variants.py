"""The 11 official ResNet-RS checkpoints: the one table every other module reads."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from converter.errors import RsconvertError

# Archives published with the ResNet-RS release in tensorflow/tpu
# (models/official/resnet/resnet_rs/README.md); RSCONVERT_BASE_URL or --base-url
# replaces the base for mirrors.
DEFAULT_BASE_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/resnet-rs/"
BASE_URL_ENV = "RSCONVERT_BASE_URL"
CHECKPOINTS_ENV = "RSCONVERT_CHECKPOINTS"
# Relative to the working directory, like the paths in the README's examples.
DEFAULT_CHECKPOINTS_DIR = Path("checkpoints")
PROVENANCE = ("tensorflow/tpu models/official/resnet/resnet_rs/README.md, "
              "ImageNet top-1 of the released checkpoints (Bello et al. 2021)")
# The eval crop of the ResNet-RS release: the crop is image_size / (image_size + 32) of
# the short side, so 0.833 at 160 px and 0.875 at 224 px.
CROP_PADDING = 32


@dataclasses.dataclass(frozen=True)
class Variant:
    """One published checkpoint: network depth, training/eval image size, official top-1 (%)."""

    depth: int
    image_size: int
    official_top1: float

    @property
    def name(self) -> str:
        return f"resnet-rs-{self.depth}-i{self.image_size}"

    @property
    def archive_name(self) -> str:
        return f"{self.name}.tar.gz"

    def url(self, base_url: str | None = None) -> str:
        base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        return base.rstrip("/") + "/" + self.archive_name

    def default_checkpoint_dir(self, root: Path | None = None) -> Path:
        return (root or checkpoints_root()) / self.name


VARIANTS: tuple[Variant, ...] = (
    Variant(50, 160, 78.8),
    Variant(101, 160, 80.3),
    Variant(101, 192, 81.2),
    Variant(152, 192, 82.0),
    Variant(152, 224, 82.2),
    Variant(152, 256, 83.0),
    Variant(200, 256, 83.4),
    Variant(270, 256, 83.8),
    Variant(350, 256, 84.0),
    Variant(350, 320, 84.2),
    Variant(420, 320, 84.4),
)
_BY_NAME = {v.name: v for v in VARIANTS}


def checkpoints_root() -> Path:
    return Path(os.environ.get(CHECKPOINTS_ENV) or DEFAULT_CHECKPOINTS_DIR)


def get_variant(name: str) -> Variant:
    """Look up a variant by name, e.g. "resnet-rs-152-i224"."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise RsconvertError(
            f"Unknown variant {name!r}; expected one of: {', '.join(_BY_NAME)}. "
            "Run `rsconvert list` to see them.") from None


def find_variant(depth: int, image_size: int) -> Variant | None:
    return _BY_NAME.get(f"resnet-rs-{depth}-i{image_size}")


def apply_variant(name: str | None, depth: int | None,
                  image_size: int | None) -> tuple[Variant | None, int | None, int | None]:
    """Merge --variant NAME with explicit --depth and image size.

    Explicit values win; a depth that disagrees with the variant is an error. Returns
    (variant or None, depth, image size).
    """
    if name is None:
        return None, depth, image_size
    variant = get_variant(name)
    if depth is not None and depth != variant.depth:
        raise RsconvertError(f"--depth {depth} conflicts with --variant {variant.name} "
                             f"(depth {variant.depth}); drop one of them.")
    return variant, variant.depth, variant.image_size if image_size is None else image_size


def downloaded_checkpoint(variant: Variant, alternative: str = "pass --checkpoint") -> str:
    """Return the variant's checkpoint directory under checkpoints/, or raise if missing."""
    location = variant.default_checkpoint_dir()
    if not location.exists():
        raise RsconvertError(
            f"Checkpoint for {variant.name} not found at {location}; run `rsconvert fetch "
            f"{variant.name}` or {alternative}.")
    return str(location)
