"""Write and read weights files in the legacy Keras HDF5 layout.

The layout is the one `save_weights("x.h5")` produced in Keras 2 and that both tf_keras and
Keras 3 (`keras/src/legacy/saving/legacy_h5_format.py`) still load:

* root attribute `layer_names`: the weighted layers, in the model's `model.layers` order.
  The loaders match file layers to model layers by this position, not by name.
* root attributes `backend` and `keras_version`;
* one group per layer with attribute `weight_names` (`"<layer>/<weight>:0"`, in the layer's
  `weights` order) and one dataset per weight at `<layer>/<layer>/<weight>:0`.

An attribute larger than HDF5's 64 KiB object-header limit is split into `name0`, `name1`,
... as Keras does. rsconvert adds provenance attributes at the root.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from converter.errors import WeightsFileError

# Keras' HDF5_OBJECT_HEADER_LIMIT: attributes above this size are split into chunks.
HDF5_OBJECT_HEADER_LIMIT = 64512
# Reported as keras_version: the Keras 2 line whose save_weights wrote this layout. Loaders
# only treat "1.x" files specially.
KERAS_LAYOUT_VERSION = "2.21.0"
# `image_size` is the eval size of the official variant. It is stored only when the
# conversion knew it (--variant or --image-size), and read back as None otherwise.
PROVENANCE_KEYS = ("rsconvert_version", "source_checkpoint", "depth", "num_classes",
                   "include_top", "weights", "stored_dtype", "image_size")


def save_attribute(group: h5py.Group, name: str, values: list[str]) -> None:
    """Store a list of strings as a bytes-array attribute, chunked past the header limit."""
    data = np.asarray([v.encode("utf-8") for v in values])
    if data.nbytes <= HDF5_OBJECT_HEADER_LIMIT:
        group.attrs[name] = data
        return
    chunks = 1
    while True:
        pieces = np.array_split(data, chunks)
        if all(p.nbytes <= HDF5_OBJECT_HEADER_LIMIT for p in pieces):
            break
        chunks += 1
    for i, piece in enumerate(pieces):
        group.attrs[f"{name}{i}"] = piece


def load_attribute(group: h5py.Group, name: str) -> list[str]:
    """Read an attribute written by save_attribute (or by Keras), joining chunks."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def write_weights(path: Path, layers, read_weight, attributes: dict, progress=None) -> None:
    """Write `layers` (LayerSpec, in Keras order) into `path`, one tensor at a time.

    `read_weight(layer, weight)` returns the float32 array for one weight and is called once
    per weight. Each array is written and dropped before the next is read, so memory stays
    near the largest tensor.
    """
    with h5py.File(path, "w") as f:
        save_attribute(f, "layer_names", [layer.name for layer in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = KERAS_LAYOUT_VERSION.encode()
        for key, value in attributes.items():
            f.attrs[key] = _attribute_value(value)
        for layer in layers:
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{w.keras_name}:0" for w in layer.weights]
            save_attribute(group, "weight_names", weight_names)
            # Weight "L/kernel:0" of layer L lives at L/L/kernel:0; creating the inner group
            # once spares h5py resolving the nested path for every dataset.
            inner = group.create_group(layer.name)
            for weight in layer.weights:
                array = np.asarray(read_weight(layer, weight), dtype=np.float32)
                if array.shape != weight.shape:
                    raise WeightsFileError(
                        f"{weight.original_name} has shape {array.shape}, expected {weight.shape}")
                inner.create_dataset(f"{weight.keras_name}:0", data=array)
            if progress is not None:
                progress(layer)


def _attribute_value(value):
    """Return `value` as HDF5 can store it: a path that is not valid UTF-8 becomes bytes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(value)
    return value


def _open_weights_file(path: str | Path) -> h5py.File:
    """Open a weights file for reading, or raise WeightsFileError saying why it cannot be."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise WeightsFileError(f"Weights file {path} is a directory; pass the .h5 file written "
                               "by `rsconvert ckpt-to-h5`.")
    if not path.is_file():
        raise WeightsFileError(f"Weights file {path} does not exist.")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise WeightsFileError(f"{path} is not a readable HDF5 file: {error}") from None


def read_provenance(path: str | Path) -> dict:
    """Return the rsconvert attributes of a weights file, or raise WeightsFileError."""
    path = Path(path).expanduser()
    with _open_weights_file(path) as f:
        attrs = dict(f.attrs)
    if "rsconvert_version" not in attrs:
        raise WeightsFileError(
            f"{path} was not written by rsconvert (no rsconvert_version attribute). Convert the "
            "checkpoint with `rsconvert ckpt-to-h5` first.")
    provenance = {}
    for key in PROVENANCE_KEYS:
        value = attrs.get(key)
        if isinstance(value, bytes):
            value = os.fsdecode(value)
        elif isinstance(value, np.generic):
            value = value.item()
        provenance[key] = value
    provenance["include_top"] = bool(provenance["include_top"])
    return provenance


def recorded_image_size(path: str | Path) -> int | None:
    """Return the eval image size stored in an rsconvert weights file, or None."""
    value = read_provenance(path)["image_size"]
    return int(value) if value is not None else None


def read_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Return {layer name: [arrays in weight order]} from a legacy-layout weights file.

    Raises WeightsFileError for a missing or unreadable file or one without that layout.
    """
    with _open_weights_file(path) as f:
        if "layer_names" not in f.attrs:
            raise WeightsFileError(f"{path} is not a Keras weights file in the legacy HDF5 "
                                   "layout (no layer_names attribute).")
        result = {}
        for layer_name in load_attribute(f, "layer_names"):
            group = f[layer_name]
            result[layer_name] = [np.asarray(group[w]) for w in load_attribute(group, "weight_names")]
        return result
