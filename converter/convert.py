"""Convert a tensorflow/tpu ResNet-RS checkpoint into a Keras HDF5 weights file.

The conversion streams: it opens one checkpoint reader, reads each tensor it needs once,
widens it to float32 and writes it into the HDF5 file before reading the next. It builds no
Keras model and imports neither TensorFlow nor Keras unless the checkpoint needs TensorFlow's
reader.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import click

from converter import __version__
from converter.arguments import require_image_size
from converter.checkpoint import open_checkpoint, to_float32
from converter.errors import UnsupportedBundleFeature
from converter.h5_weights import write_weights
from converter.output_files import atomic_output, check_output_path
from converter.name_map import build_name_map

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    output: Path
    checkpoint: str
    reader_backend: str
    depth: int
    num_classes: int
    weights: str
    include_top: bool
    stored_dtype: str
    num_layers: int
    num_tensors: int
    num_parameters: int
    bytes_read: int
    seconds: float

    def summary(self) -> str:
        top = "with classifier" if self.include_top else "without classifier (notop)"
        return (f"Wrote {self.output}: ResNet-RS-{self.depth}, {self.num_classes} classes, "
                f"{top}, {self.weights} weights, {self.num_layers} layers, {self.num_tensors} "
                f"tensors, {self.num_parameters:,} parameters (float32; the checkpoint stored "
                f"{self.stored_dtype}) in {self.seconds:.2f} s")


def default_output_name(depth: int, include_top: bool, image_size: int | None = None) -> str:
    """Return keras-applications' file name, e.g. resnet-rs-152-i224_notop.h5."""
    stem = f"resnet-rs-{depth}" + (f"-i{image_size}" if image_size else "")
    return stem + ("" if include_top else "_notop") + ".h5"


def _convert_with(reader, output: Path, depth, weights, include_top, overwrite,
                  expected_classes, image_size, show_progress) -> ConversionReport:
    start = time.perf_counter()
    name_map = build_name_map(reader, depth=depth, weights=weights, include_top=include_top,
                              expected_classes=expected_classes)
    tensor_for = {(s.layer.name, s.weight.keras_name): s.tensor for s in name_map.sources}
    bytes_read = 0

    def read_weight(layer, weight):
        nonlocal bytes_read
        tensor = tensor_for[(layer.name, weight.keras_name)]
        bytes_read += reader.nbytes(tensor)
        return to_float32(reader.read(tensor))

    attributes = {
        "rsconvert_version": __version__,
        "source_checkpoint": str(Path(reader.prefix).resolve()),
        "depth": name_map.depth,
        "num_classes": name_map.num_classes,
        "include_top": int(include_top),
        "weights": weights,
        "stored_dtype": name_map.stored_dtype,
    }
    if image_size is not None:
        attributes["image_size"] = image_size
    num_parameters = sum(math.prod(s.weight.shape) for s in name_map.sources)
    float32_bytes = 4 * num_parameters
    with atomic_output(output, overwrite=overwrite, expected_bytes=float32_bytes) as temp:
        if show_progress:
            with click.progressbar(length=len(name_map.layers), label="Converting",
                                   file=sys.stderr) as bar:
                write_weights(temp, name_map.layers, read_weight, attributes,
                              progress=lambda layer: bar.update(1))
        else:
            write_weights(temp, name_map.layers, read_weight, attributes)
    return ConversionReport(
        output=output, checkpoint=reader.prefix, reader_backend=reader.backend,
        depth=name_map.depth, num_classes=name_map.num_classes, weights=weights,
        include_top=include_top, stored_dtype=name_map.stored_dtype,
        num_layers=len(name_map.layers), num_tensors=len(name_map.sources),
        num_parameters=num_parameters,
        bytes_read=bytes_read, seconds=time.perf_counter() - start)


def convert_checkpoint(checkpoint: str | Path, output: str | Path, depth: int | None = None,
                       weights: str = "ema", include_top: bool = True, overwrite: bool = False,
                       expected_classes: int | None = None, backend: str = "auto",
                       image_size: int | None = None,
                       show_progress: bool | None = None) -> ConversionReport:
    """Convert `checkpoint` into the legacy-layout Keras weights file `output`.

    `image_size`, when given, is recorded in the file as the eval image size, so that
    parity-check and eval default to it.

    Raises CheckpointError, MappingError or OutputError with a message that names the
    problem; `output` is then neither created nor changed.
    """
    output = check_output_path(output, overwrite)
    if image_size is not None:
        require_image_size(image_size)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    reader = open_checkpoint(checkpoint, backend=backend)
    try:
        return _convert_with(reader, output, depth, weights, include_top, overwrite,
                             expected_classes, image_size, show_progress)
    except UnsupportedBundleFeature as error:
        if backend != "auto":
            raise
        logger.warning("Notice: the built-in reader does not support %s; using TensorFlow's "
                       "checkpoint reader instead.", error)
    finally:
        reader.close()
    with open_checkpoint(checkpoint, backend="tensorflow") as tf_reader:
        return _convert_with(tf_reader, output, depth, weights, include_top, overwrite,
                             expected_classes, image_size, show_progress)
