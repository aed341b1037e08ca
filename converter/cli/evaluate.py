"""`rsconvert eval`: ImageNet top-1/top-5 of a converted ResNet-RS."""

from __future__ import annotations

import json

import click

from converter.cli.options import (checkpoint_option, crop_padding_option, depth_option,
                                   overwrite_option, variant_option, weights_choice_option)
from converter.cli.tensorflow_import import import_tensorflow_quietly


@click.command("eval")
@click.option("--data", required=True, metavar="PATH",
              help="Directory of validation-* TFRecords (imagenet_to_gcs layout), of per-wnid "
                   "image subfolders, or of images with labels from --labels.")
@click.option("--labels", "labels_file", default=None, metavar="FILE",
              help="Labels of a flat image folder: one wnid per line in file-name order, "
                   "LOC_val_solution.csv, or file<TAB>label lines with labels 1..1000 in sorted "
                   "wnid order.")
@click.option("--image-size", "--image_size", "image_size", type=int, default=None,
              help="Eval image side in pixels; default: the --variant's size, else the size "
                   "recorded in the weights file.")
@click.option("--weights-file", default=None, metavar="FILE.h5",
              help="Weights file written by `rsconvert ckpt-to-h5`.")
@checkpoint_option()
@variant_option
@depth_option
@weights_choice_option(
    default=None,
    default_help=" Default: ema when converting a --checkpoint; with --weights-file, the weights "
                 "the file holds (a different --weights is an error).")
@click.option("--batch-size", type=int, default=64, help="Global batch size in images.")
@click.option("--limit", type=int, default=None,
              help="Evaluate only the first N images (default: all).")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32",
              help="Compute dtype; bfloat16 uses the Keras mixed_bfloat16 policy with float32 "
                   "logits.")
@crop_padding_option
@click.option("--skip-bad-images", is_flag=True,
              help="Skip images that cannot be decoded and report how many; without it the "
                   "first such image stops the run.")
@click.option("--results-file", default=None, metavar="FILE.json|FILE.csv",
              help="Also write the result row here, as JSON or CSV by suffix.")
@click.option("--predictions-file", default=None, metavar="FILE.csv",
              help="Write one CSV row per image: image (the TFRecord image/filename when "
                   "stored), source (shard:record or relative path), label and top1..top5 as "
                   "0-based class indices (TFRecord label - 1), label_wnid, top1_wnid.")
@overwrite_option("results or predictions file")
def command(data, labels_file, image_size, weights_file, checkpoint, variant, depth, weights,
            batch_size, limit, precision, crop_padding, skip_bad_images, results_file,
            predictions_file, overwrite):
    """Evaluate ImageNet top-1/top-5 and print the result row as JSON."""
    from converter.evaluation import evaluate

    result = evaluate(
        data, image_size, weights_file=weights_file, checkpoint=checkpoint, variant=variant,
        depth=int(depth) if depth is not None else None, labels_file=labels_file,
        batch_size=batch_size, limit=limit, precision=precision, crop_padding=crop_padding,
        weights=weights, skip_bad_images=skip_bad_images, results_file=results_file,
        predictions_file=predictions_file, overwrite=overwrite,
        before_tensorflow=import_tensorflow_quietly)
    click.echo(json.dumps(result.row()))
