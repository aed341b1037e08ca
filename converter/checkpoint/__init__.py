"""Reading tensorflow/tpu checkpoints: path resolution, the bundle reader and its fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converter.checkpoint.bundle import BundleReader
from converter.checkpoint.locate import resolve_prefix
from converter.checkpoint.variables import (EMA_SUFFIX, MOMENTUM_SUFFIX, WEIGHT_CHOICES,
                                            check_tf1_layout, detect_depth, num_classes,
                                            source_name, split_names)
from converter.errors import CheckpointError, UnsupportedBundleFeature

logger = logging.getLogger(__name__)

__all__ = [
    "EMA_SUFFIX", "MOMENTUM_SUFFIX", "WEIGHT_CHOICES", "open_checkpoint", "load_model_variables",
    "detect_depth", "num_classes", "split_names", "source_name", "to_float32", "resolve_prefix",
]


def to_float32(array: np.ndarray) -> np.ndarray:
    """Widen float16/bfloat16/float64 tensors to float32; bfloat16 widening is exact."""
    if array.dtype == np.float32:
        return array
    return array.astype(np.float32)


def open_checkpoint(path: str | Path, backend: str = "auto"):
    """Open a checkpoint with the numpy bundle reader, or TensorFlow's reader.

    backend "auto" tries the bundle reader and falls back to TensorFlow's reader, with a
    one-line notice, when the checkpoint uses a feature the bundle reader does not implement.
    """
    prefix = resolve_prefix(path)
    if backend not in ("auto", "bundle", "tensorflow"):
        raise ValueError(f"backend must be auto, bundle or tensorflow, got {backend!r}")
    if backend == "tensorflow":
        from converter.checkpoint.tf_reader import TensorFlowReader
        return TensorFlowReader(prefix)
    try:
        return BundleReader(prefix)
    except UnsupportedBundleFeature as error:
        if backend == "bundle":
            raise
        logger.warning("Notice: the built-in reader does not support %s; using TensorFlow's "
                       "checkpoint reader instead.", error)
        from converter.checkpoint.tf_reader import TensorFlowReader
        return TensorFlowReader(prefix)


def load_model_variables(path: str | Path, weights: str = "ema") -> dict[str, np.ndarray]:
    """Return every model variable under its base name as float32, EMA shadow or raw value."""
    with open_checkpoint(path) as reader:
        names = reader.names()
        check_tf1_layout(names, reader.prefix)
        contents = split_names(names)
        if weights == "ema" and not contents.has_ema:
            raise CheckpointError(
                f"{reader.prefix} has no {EMA_SUFFIX} tensors; use --weights raw to read the raw "
                "variables instead.")
        variables = {}
        for base in sorted(contents.model):
            if weights == "ema" and base not in contents.ema:
                raise CheckpointError(
                    f"{reader.prefix} has no {base}{EMA_SUFFIX}; use --weights raw to read the "
                    "raw variables instead.")
            variables[base] = to_float32(reader.read(source_name(base, weights)))
        return variables
