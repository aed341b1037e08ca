"""Options and resolution steps shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

from converter.errors import RsconvertError
from converter.variants import Variant, get_variant


def variant_option(function):
    return click.option(
        "--variant", default=None, metavar="NAME",
        help="Official variant, e.g. resnet-rs-152-i224: fills --depth, the image size and "
             "the checkpoint location under checkpoints/ (see `rsconvert list`).")(function)


def checkpoint_option(required: bool = False):
    return click.option(
        "--checkpoint", "checkpoint", default=None, required=required, metavar="PATH",
        help="Checkpoint directory, prefix (.../model.ckpt) or its .index/.data file.")


def depth_option(function):
    return click.option(
        "--depth", type=click.Choice(["50", "101", "152", "200", "270", "350", "420"]),
        default=None, help="ResNet-RS depth; detected from the checkpoint when omitted.")(function)


def weights_choice_option(function):
    return click.option(
        "--weights", "weights", type=click.Choice(["ema", "raw"]), default="ema",
        help="ema: the /ExponentialMovingAverage shadows the official eval restored "
             "(trainables and BN statistics); raw: the training variables.")(function)


def resolve_variant(variant_name: str | None, checkpoint: str | None, depth: str | None,
                    image_size: int | None) -> tuple[Variant | None, str | None, int | None, int | None]:
    """Merge --variant with explicit options; explicit options win, conflicts are errors."""
    depth_value = int(depth) if depth is not None else None
    if variant_name is None:
        return None, checkpoint, depth_value, image_size
    variant = get_variant(variant_name)
    if depth_value is not None and depth_value != variant.depth:
        raise RsconvertError(f"--depth {depth_value} conflicts with --variant {variant.name} "
                             f"(depth {variant.depth}); drop one of them.")
    if checkpoint is None:
        location = variant.default_checkpoint_dir()
        if not Path(location).exists():
            raise RsconvertError(
                f"Checkpoint for {variant.name} not found at {location}; run `rsconvert fetch "
                f"{variant.name}` or pass --checkpoint.")
        checkpoint = str(location)
    return variant, checkpoint, variant.depth, image_size or variant.image_size
