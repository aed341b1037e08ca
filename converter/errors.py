"""Exception types raised by the library; the CLI turns each into one line and an exit code."""


class RsconvertError(Exception):
    """Base class for errors caused by the user's input: the CLI exits with status 2."""


class CheckpointError(RsconvertError):
    """The checkpoint is missing, unreadable or not a tensorflow/tpu ResNet-RS checkpoint."""


class UnsupportedBundleFeature(CheckpointError):
    """The checkpoint uses a feature that the pure-numpy bundle reader does not implement."""


class MappingError(RsconvertError):
    """The checkpoint's variables do not map one-to-one onto the Keras layers."""


class WeightsFileError(RsconvertError):
    """An .h5 weights file is missing, not written by rsconvert, or for another model."""


class OutputError(RsconvertError):
    """The output path cannot be written."""


class DiskFullError(OutputError):
    """A write ran out of disk space or quota; the partial output was removed."""


class DataError(RsconvertError):
    """Evaluation data is missing, malformed or has labels out of range."""
