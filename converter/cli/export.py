"""`rsconvert export`: a converted .h5 as a .keras model, a SavedModel or Keras 3 .weights.h5."""

from __future__ import annotations

from pathlib import Path

import click

from converter.cli.options import overwrite_option
from converter.cli.tensorflow_import import import_tensorflow_quietly
# converter.export imports Keras and TensorFlow only inside its functions.
from converter.export import EXPORT_FORMATS, export_model


@click.command("export")
@click.option("--weights-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Weights file written by `rsconvert ckpt-to-h5`.")
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default=None,
              help="keras: whole model (.keras); savedmodel: TensorFlow SavedModel folder with "
                   "a serving_default signature that takes pixels in 0..255; weights.h5: Keras 3 "
                   "weights only. Default: from the --output name (.keras, .weights.h5, else "
                   "savedmodel).")
@click.option("--output", type=click.Path(path_type=Path), required=True,
              help="File (.keras, .weights.h5) or folder (savedmodel) to write.")
@click.option("--image-size", "--image_size", "image_size", type=click.IntRange(min=1),
              default=None, help="Input height and width in pixels; any size when omitted.")
@overwrite_option("output")
def command(weights_file: Path, export_format: str, output: Path, image_size: int | None,
            overwrite: bool) -> None:
    """Export a converted weights file for Keras 3 or TensorFlow Serving."""
    report = export_model(weights_file, output, export_format, image_size=image_size,
                          overwrite=overwrite, before_tensorflow=import_tensorflow_quietly)
    click.echo(report.summary())
