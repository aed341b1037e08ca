"""Export a converted `.h5` as a Keras 3 `.keras` model, a TensorFlow SavedModel or `.weights.h5`.

Every export is written to a temporary path beside the target and renamed into place when
complete, so the target is either the finished export or untouched.

- `keras`: the whole model (architecture and weights); the output is the logits, or the
  last feature map for a notop file.
- `weights.h5`: Keras 3 weights only; load them into `converter.keras_model.ResNetRS` built
  with the same depth and classes.
- `savedmodel`: a SavedModel for TensorFlow Serving whose `serving_default` signature takes
  `images`, float32 RGB pixels in 0..255 of shape [N, S, S, 3], normalizes them with
  `(x / 255 - mean) / std` (ImageNet mean and std) and returns `logits` and
  `probabilities` (softmax). A notop file returns `features` instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from converter.arguments import require_image_size
from converter.errors import OutputError, RsconvertError
from converter.output_files import (SPACE_MARGIN_BYTES, atomic_output, check_free_space,
                                     translate_disk_full)

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("keras", "savedmodel", "weights.h5")
# Keras 3 decides the file format by these suffixes and rejects other names.
FILE_SUFFIXES = {"keras": ".keras", "weights.h5": ".weights.h5"}
# The file that every SavedModel folder contains.
SAVED_MODEL_FILE = "saved_model.pb"
# The entries that TensorFlow and tf.keras write into a SavedModel folder.
SAVED_MODEL_ENTRIES = frozenset({SAVED_MODEL_FILE, "variables", "assets", "assets.extra",
                                 "fingerprint.pb", "keras_metadata.pb"})
# An estimate of a SavedModel's size beyond its variables, with room for depth 420.
SAVED_MODEL_GRAPH_BYTES = 32 * 2**20
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "images"


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """The output of one finished export and the model it contains."""

    output: Path
    export_format: str
    weights_file: Path
    depth: int
    num_classes: int
    include_top: bool
    image_size: int | None
    seconds: float

    def summary(self) -> str:
        size = f"{self.image_size} px" if self.image_size else "any image size"
        top = f"{self.num_classes} classes" if self.include_top else "notop"
        return (f"Wrote {self.output} ({self.export_format}): ResNet-RS-{self.depth}, {top}, "
                f"{size}, in {self.seconds:.1f} s")


def infer_export_format(output: str | Path) -> str:
    """Return the export format an output name implies: .keras, .weights.h5, else savedmodel."""
    name = Path(output).name
    for export_format, suffix in FILE_SUFFIXES.items():
        if name.endswith(suffix):
            return export_format
    return "savedmodel"


def export_model(weights_file: str | Path, output: str | Path, export_format: str | None = None,
                 *, image_size: int | None = None, overwrite: bool = False,
                 before_tensorflow: Callable[[], None] | None = None) -> ExportReport:
    """Load an rsconvert `.h5` and write it to `output` in `export_format`.

    Without `export_format` the format follows the output name (`infer_export_format`).

    `image_size` fixes the input height and width; without it the exports accept any size.
    Raises OutputError when `output` exists (unless `overwrite`), has the wrong suffix, or
    its folder is missing, and WeightsFileError for a file that rsconvert did not write.
    `before_tensorflow` is called after those checks, before TensorFlow is first used.
    """
    from converter.h5_weights import read_provenance

    weights_file = Path(weights_file)
    if export_format is None:
        export_format = infer_export_format(output)
    output = check_export_path(output, export_format, overwrite)
    if image_size is not None:
        require_image_size(image_size)
    start = time.perf_counter()
    provenance = read_provenance(weights_file)
    # Every format stores the float32 tensors of the .h5. A SavedModel stores them twice,
    # plus its graph: 288.4 MB in all for the 143.4 MB .h5 of ResNet-RS-50, 2.3 MB of it
    # outside variables/. SAVED_MODEL_GRAPH_BYTES leaves room for deeper graphs.
    weights_bytes = weights_file.stat().st_size
    needed = weights_bytes + SPACE_MARGIN_BYTES
    if export_format == "savedmodel":
        needed += weights_bytes + SAVED_MODEL_GRAPH_BYTES
    check_free_space(output.parent, needed, str(output))

    # Imported after the checks above, so that bad input fails before TensorFlow loads.
    if before_tensorflow is not None:
        before_tensorflow()
    from converter.keras_model import load_weights_file

    input_shape = (image_size, image_size, 3) if image_size else None
    model = load_weights_file(weights_file, input_shape=input_shape, classifier_activation=None)
    include_top = bool(provenance["include_top"])
    logger.info("Loaded %s; writing %s as %s", weights_file, output, export_format)

    if export_format == "keras":
        _write_file(output, overwrite, lambda temp: model.save(temp))
    elif export_format == "weights.h5":
        _write_file(output, overwrite, lambda temp: model.save_weights(temp))
    else:
        _write_directory(output, overwrite,
                         lambda temp: write_saved_model(model, temp, image_size, include_top))

    return ExportReport(output=output, export_format=export_format, weights_file=weights_file,
                        depth=int(provenance["depth"]),
                        num_classes=int(provenance["num_classes"]), include_top=include_top,
                        image_size=image_size, seconds=time.perf_counter() - start)


def check_export_path(output: str | Path, export_format: str, overwrite: bool) -> Path:
    """Raise unless `output` can receive an export in `export_format`; return it as a Path."""
    if export_format not in EXPORT_FORMATS:
        raise RsconvertError(f"Unknown export format {export_format!r}; expected one of "
                             f"{', '.join(EXPORT_FORMATS)}.")
    path = Path(output)
    suffix = FILE_SUFFIXES.get(export_format)
    if suffix is not None and not path.name.endswith(suffix):
        raise OutputError(f"A {export_format} export must be a file ending in {suffix}. "
                          f"Received: {path}. Use e.g. {path.with_name(path.stem + suffix)}.")
    if suffix is None and path.name.endswith((".h5", ".keras")):
        raise OutputError(f"A {export_format} export is a folder, but {path} has a file "
                          "suffix; pass a folder name, or --format keras or weights.h5 for a "
                          "file.")
    if path.exists() and not overwrite:
        raise OutputError(f"Output {path} already exists; pass --overwrite to replace it.")
    if suffix is not None and path.is_dir():
        raise OutputError(f"Output {path} is a directory; a {export_format} export is a file.")
    if suffix is None and path.exists():
        # --overwrite replaces the whole folder, so it must be an earlier export.
        if not path.is_dir() or path.resolve() in (Path.cwd(), *Path.cwd().parents):
            raise OutputError(f"Output {path} is not a folder that an export can replace; "
                              "choose a new folder name.")
        if not (path / SAVED_MODEL_FILE).is_file():
            raise OutputError(f"Output {path} is a folder without {SAVED_MODEL_FILE}, so it is "
                              "not a SavedModel and --overwrite would delete its files; "
                              "choose another folder name.")
        others = sorted(entry.name for entry in path.iterdir()
                        if entry.name not in SAVED_MODEL_ENTRIES)
        if others:
            raise OutputError(f"Output {path} is a SavedModel folder that also contains "
                              f"{', '.join(others)}, which --overwrite would delete; move "
                              "them out or choose another folder name.")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"Output directory {parent} is a file, not a directory.")
    if not parent.is_dir():
        raise OutputError(f"Output directory {parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Output directory {parent} is not writable.")
    return path


def write_saved_model(model, directory: Path, image_size: int | None, include_top: bool) -> None:
    """Write `model` as a SavedModel with the `serving_default` signature described above."""
    import keras
    import tensorflow as tf

    from converter.keras_model import MEAN_RGB, STDDEV_RGB

    mean = tf.constant(MEAN_RGB, tf.float32)
    stddev = tf.constant(STDDEV_RGB, tf.float32)

    def serve(images):
        normalized = (images / 255.0 - mean) / stddev
        outputs = tf.cast(model(normalized, training=False), tf.float32)
        if include_top:
            return {"logits": outputs, "probabilities": tf.nn.softmax(outputs, axis=-1)}
        return {"features": outputs}

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=SERVING_INPUT)
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[spec])
    archive.write_out(str(directory), verbose=False)


def _write_file(target: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    # The temporary name keeps the suffix, because Keras picks the format from it.
    suffix = next(s for s in FILE_SUFFIXES.values() if target.name.endswith(s))
    with atomic_output(target, overwrite=overwrite, suffix=suffix) as temp:
        write(temp)


def _write_directory(target: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent))
    except OSError as error:
        raise OutputError(f"Cannot create a temporary folder beside {target}: {error}") from None
    try:
        export = staging / "export"
        with translate_disk_full(target):
            write(export)
        if target.exists():
            if not overwrite:
                raise OutputError(f"Output {target} appeared while writing; not replacing it.")
            # Same file system, so both renames are atomic; the old export goes with staging.
            target.replace(staging / "previous")
        export.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
