"""`rsconvert ckpt-to-h5`: checkpoint to legacy Keras HDF5 weights."""

from __future__ import annotations

import click

from converter.cli.options import (checkpoint_option, depth_option, overwrite_option,
                                   resolve_checkpoint, variant_option, weights_choice_option)


@click.command("ckpt-to-h5")
@checkpoint_option()
@variant_option
@depth_option
@click.option("--output", "-o", default=None, metavar="FILE.h5",
              help="Output file; default resnet-rs-DEPTH[-iSIZE][_notop].h5 in the current "
                   "directory.")
@weights_choice_option()
@click.option("--include-top/--no-include-top", default=True,
              help="Write the dense classifier; --no-include-top writes the notop file.")
@click.option("--image-size", "--image_size", "image_size", type=int, default=None,
              help="Eval image side in pixels to record in the file, which parity-check and "
                   "eval then default to; default: the --variant's size, else none.")
@click.option("--num-classes", type=int, default=None,
              help="Fail unless the checkpoint's classifier has this many classes.")
@click.option("--reader", type=click.Choice(["auto", "bundle", "tensorflow"]), default="auto",
              help="Checkpoint reader: the built-in numpy reader, TensorFlow's, or the built-in "
                   "one with TensorFlow as fallback.")
@overwrite_option("output file")
def command(checkpoint, variant, depth, output, weights, include_top, image_size, num_classes,
            reader, overwrite):
    """Convert a tensorflow/tpu ResNet-RS checkpoint into Keras .h5 weights."""
    from converter.checkpoint import detect_depth, open_checkpoint
    from converter.convert import convert_checkpoint, default_output_name

    checkpoint, depth_value, image_size = resolve_checkpoint(variant, checkpoint, depth,
                                                             image_size)
    if output is None:
        if depth_value is None:
            with open_checkpoint(checkpoint, backend=reader) as opened:
                depth_value_for_name = detect_depth(opened)
        else:
            depth_value_for_name = depth_value
        output = default_output_name(depth_value_for_name, include_top, image_size)
    report = convert_checkpoint(checkpoint, output, depth=depth_value, weights=weights,
                                include_top=include_top, overwrite=overwrite,
                                expected_classes=num_classes, backend=reader,
                                image_size=image_size)
    click.echo(report.summary())
