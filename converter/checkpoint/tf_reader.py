"""TensorFlow's own checkpoint reader behind the same interface as BundleReader."""

from __future__ import annotations

import numpy as np

from converter.errors import CheckpointError


class TensorFlowReader:
    """Wrap `tf.train.load_checkpoint`; slower to open, but reads every feature TF writes."""

    backend = "tensorflow"

    def __init__(self, prefix: str):
        import tensorflow as tf

        self.prefix = prefix
        try:
            self._reader = tf.train.load_checkpoint(prefix)
        except (tf.errors.OpError, ValueError) as error:
            raise CheckpointError(f"TensorFlow cannot read checkpoint {prefix}: {error}") from None
        self._shapes = self._reader.get_variable_to_shape_map()
        self._dtypes = self._reader.get_variable_to_dtype_map()

    def names(self) -> list[str]:
        return sorted(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._shapes[name])

    def dtype(self, name: str) -> str:
        return self._dtypes[name].name

    def nbytes(self, name: str) -> int:
        dtype = self._dtypes[name]
        return int(np.prod(self._shapes[name], dtype=np.int64)) * dtype.size

    def read(self, name: str) -> np.ndarray:
        import tensorflow as tf

        try:
            return np.asarray(self._reader.get_tensor(name))
        except (tf.errors.OpError, IndexError, ValueError) as error:
            # A short data shard surfaces as IndexError("Read less bytes than requested").
            raise CheckpointError(f"Reading {name} from {self.prefix} failed: {error}") from None

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> "TensorFlowReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
