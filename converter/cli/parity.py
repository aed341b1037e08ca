"""`rsconvert parity-check`: the converted Keras model against the original graph."""

from __future__ import annotations

import sys

import click

from converter.cli.options import (EXIT_CHECK_FAILED, checkpoint_option, crop_padding_option,
                                   depth_option, overwrite_option, resolve_checkpoint,
                                   variant_option, weights_choice_option)
from converter.cli.tensorflow_import import import_tensorflow_quietly


@click.command("parity-check")
@checkpoint_option()
@click.option("--weights-file", required=True, metavar="FILE.h5",
              help="The rsconvert .h5 weights file to check.")
@variant_option
@depth_option
@click.option("--image-size", "--image_size", "image_size", type=int, default=None,
              help="Input side in pixels; default: the --variant's size, else the size "
                   "recorded in the weights file, else 224.")
@click.option("--images", "image_option", multiple=True, metavar="IMAGE",
              help="Image files to compare on, the same as IMAGE arguments; more paths may "
                   "follow the first without repeating --images.")
@click.argument("more_images", nargs=-1, metavar="[IMAGE]...")
@click.option("--random", "random_images", type=int, default=None, metavar="N",
              help="Compare on N photo-like random images instead of files; 2 when no "
                   "image file and no --random is given.")
@click.option("--seed", type=int, default=0, help="Seed for --random.")
@weights_choice_option(default=None,
                       default_help=" Default: the weights the .h5 was converted from.")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32",
              help="How the original graph runs: float32, or bfloat16 as on the TPU (then "
                   "the bfloat16-vs-float32 logit gap is reported too).")
@crop_padding_option
@click.option("--batch-size", type=int, default=8, help="Images per forward pass.")
@click.option("--json", "json_path", default=None, metavar="FILE.json",
              help="Also write the full report as JSON to this file.")
@overwrite_option("--json file")
def command(checkpoint, weights_file, variant, depth, image_size, image_option, more_images,
            random_images, seed, weights, precision, crop_padding, batch_size, json_path,
            overwrite):
    """Compare a converted .h5 with the original graph, stage by stage.

    The inputs are the IMAGE files (JPEG, PNG, GIF, BMP), preprocessed like the release
    eval, or photo-like random images (--random). Exits with 0 when every stage is within
    tolerance, 1 when one is not, 2 on bad input.
    """
    checkpoint, depth_value, image_size = resolve_checkpoint(variant, checkpoint, depth,
                                                             image_size)
    import_tensorflow_quietly()
    from converter.parity import run_parity_check

    # An explicit --image-size, 0 included, is passed on for the library to check.
    report = run_parity_check(
        checkpoint, weights_file, depth=depth_value, image_size=image_size,
        images=list(image_option) + list(more_images), random_images=random_images, seed=seed,
        weights=weights, precision=precision, crop_padding=crop_padding, batch_size=batch_size,
        json_path=json_path, overwrite=overwrite)
    click.echo(report.format_table())
    if not report.passed:
        sys.exit(EXIT_CHECK_FAILED)
