"""Fixtures shared by the test modules: reference data and generated checkpoints."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Data produced by running the original tensorflow/tpu code, kept beside the repository.
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"
GOLDEN_DIR = REFERENCE_DIR / "golden-rs50-i160"
# Relative to the largest |logit|: float32 reorderings between TF1 graph ops and Keras layers.
LOGIT_TOLERANCE = 5e-5


def max_relative_error(actual, expected) -> float:
    """Largest absolute difference over the largest magnitude of `expected`."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def require_reference(path: Path = REFERENCE_DIR) -> Path:
    if not path.exists():
        pytest.skip(f"reference data from the original tensorflow/tpu code not found at {path}")
    return path


@pytest.fixture(scope="session")
def golden_checkpoint(tmp_path_factory) -> str:
    """The golden RS-50 checkpoint unpacked into a temporary directory; returns its prefix."""
    archive = require_reference(GOLDEN_DIR) / "model.ckpt.tar.xz"
    target = tmp_path_factory.mktemp("golden")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return str(target / "model.ckpt")


@pytest.fixture(scope="session")
def golden_h5(golden_checkpoint, tmp_path_factory):
    """Convert the golden checkpoint once per weights choice; returns {"ema": path, "raw": path}."""
    from converter.convert import convert_checkpoint

    directory = tmp_path_factory.mktemp("golden-h5")
    paths = {}
    for weights in ("ema", "raw"):
        paths[weights] = directory / f"resnet-rs-50-i160-{weights}.h5"
        convert_checkpoint(golden_checkpoint, paths[weights], weights=weights)
    return paths


@pytest.fixture(scope="module")
def module_tmp_path(request, tmp_path_factory):
    """Yield a directory for one module's shared files and remove it after the module's tests.

    A full-size ResNet-RS-50 checkpoint takes about 400 MB, so files that outlive their
    tests add up to several GB over the whole suite.
    """
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def write_checkpoint(tmp_path):
    """Return a function that writes an original-layout checkpoint for one test only."""
    from converter.checkpoint.synthetic import write_original_checkpoint

    def write(**options) -> str:
        return write_original_checkpoint(tempfile.mkdtemp(prefix="checkpoint-", dir=tmp_path),
                                         **options)

    return write


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """Return a factory that writes (and caches) original-layout checkpoints by options.

    The cache lasts the whole session, so it suits only option sets that many tests share.
    """
    from converter.checkpoint.synthetic import write_original_checkpoint

    cache: dict[tuple, str] = {}

    def make(**options) -> str:
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        if key not in cache:
            directory = tmp_path_factory.mktemp("checkpoint")
            cache[key] = write_original_checkpoint(directory, **options)
        return cache[key]

    return make
