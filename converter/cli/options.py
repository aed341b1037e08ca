"""Options and resolution steps shared by several commands."""

from __future__ import annotations

import click

from converter.errors import RsconvertError
from converter.variants import CROP_PADDING, apply_variant, downloaded_checkpoint

# Exit status when a command ran to the end but its result failed: a parity stage beyond
# tolerance, or a table variant whose step failed. Bad input exits with 2.
EXIT_CHECK_FAILED = 1


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


WEIGHTS_HELP = ("ema: the /ExponentialMovingAverage shadows the official eval restored "
                "(trainables and BN statistics); raw: the training variables.")


def weights_choice_option(default: str | None = "ema", default_help: str = ""):
    """Return the --weights option; `default_help` describes a default of None."""
    return click.option(
        "--weights", "weights", type=click.Choice(["ema", "raw"]), default=default,
        help=WEIGHTS_HELP + default_help)


def crop_padding_option(function):
    return click.option(
        "--crop-padding", type=int, default=CROP_PADDING, show_default=True,
        help="Pixels of padding in the center crop: the crop side is image_size / (image_size "
             "+ padding) times the short side of the image, as in the release eval.")(function)


def overwrite_option(output_description: str):
    return click.option("--overwrite", is_flag=True,
                        help=f"Replace an existing {output_description}.")


def resolve_checkpoint(variant_name: str | None, checkpoint: str | None, depth: str | None,
                       image_size: int | None) -> tuple[str, int | None, int | None]:
    """Merge --variant with explicit options into (checkpoint, depth, image size).

    An explicit --depth that differs from the variant's is an error, and so is having
    neither --checkpoint nor --variant. Without --checkpoint, the variant's downloaded
    checkpoint is used.
    """
    depth_value = int(depth) if depth is not None else None
    variant, depth_value, image_size = apply_variant(variant_name, depth_value, image_size)
    if variant is not None and checkpoint is None:
        checkpoint = downloaded_checkpoint(variant)
    if checkpoint is None:
        raise RsconvertError("Missing --checkpoint PATH (or --variant NAME).")
    return checkpoint, depth_value, image_size
