"""Import TensorFlow for a command without its start-up lines on the terminal.

While TensorFlow 2.21 loads and first lists its devices, its C++ runtime writes lines such
as "oneDNN custom operations are on" and, on machines without a GPU driver, "failed call to
cuInit" straight to file descriptor 2, before TF_CPP_MIN_LOG_LEVEL applies to them. The
commands that run TensorFlow call `import_tensorflow_quietly` first. It captures those lines
and writes them to stderr only when the import fails. With debug logging (-vv) it does
nothing, so TensorFlow prints them as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[BinaryIO]:
    """Point file descriptor 2 at a temporary file for the block; restore it afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and list its devices with the runtime's start-up lines held back."""
    if "tensorflow" in sys.modules or logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    error = None
    with _stderr_to_file() as captured:
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException as caught:  # re-raised below, after the held-back lines
            error = caught
            captured.seek(0)
            held_back = captured.read()
    if error is not None:
        # The lines explain a failed import. After Ctrl-C or a stop signal they are noise.
        if isinstance(error, Exception):
            sys.stderr.write(held_back.decode("utf-8", "replace"))
        raise error
