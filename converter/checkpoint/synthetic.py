"""Write random ResNet-RS checkpoints in the exact tensorflow/tpu layout, with TensorFlow.

The files are written by TensorFlow's own SaveV2 and MergeV2Checkpoints ops, the ones
`tf.compat.v1.train.Saver` runs, so they are real V2 checkpoints: original variable names,
`/ExponentialMovingAverage` shadows, `/Momentum` slots, `global_step`, optionally sharded
and stored as bfloat16. The demo, the tests and the benchmarks build their inputs here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter import architecture
from converter.checkpoint.variables import EMA_SUFFIX, MOMENTUM_SUFFIX

STORAGE_DTYPES = ("float32", "bfloat16", "mixed")


def random_variables(depth: int, num_classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw model variables whose activations stay in a normal range on photo-like inputs."""
    rng = np.random.default_rng(seed)
    variables = {}
    for name, shape in architecture.original_variables(depth, num_classes):
        leaf = name.rsplit("/", 1)[1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif leaf == "gamma":
            value = rng.uniform(0.2, 0.5, shape)
        elif leaf == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:
            raise ValueError(f"no rule to draw {name}")
        variables[name] = value.astype(np.float32)
    return variables


def checkpoint_tensors(variables: dict[str, np.ndarray], ema: bool = True, momentum: bool = True,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Return `variables` plus the shadows and slots that an official checkpoint contains."""
    rng = np.random.default_rng(seed + 1)
    tensors = dict(variables)
    for name, value in variables.items():
        if ema:
            # Shadows differ from the raw values so that EMA and raw conversions differ.
            shadow = value + rng.normal(0.0, 0.01, value.shape).astype(np.float32)
            if name.endswith("moving_variance"):
                shadow = np.abs(shadow)
            tensors[name + EMA_SUFFIX] = shadow
        if momentum and not name.rsplit("/", 1)[1].startswith("moving_"):
            tensors[name + MOMENTUM_SUFFIX] = rng.normal(0.0, 0.01, value.shape).astype(np.float32)
    tensors["global_step"] = np.array(109475, dtype=np.int64)
    return tensors


def _stored(name: str, value: np.ndarray, storage: str) -> np.ndarray:
    import ml_dtypes

    if value.dtype != np.float32 or storage == "float32":
        return value
    if storage == "bfloat16" or (storage == "mixed" and "conv2d" in name):
        return value.astype(ml_dtypes.bfloat16)
    return value


def save_tensors(prefix: str | Path, tensors: dict[str, np.ndarray], num_shards: int = 1,
                 storage: str = "float32") -> str:
    """Write `tensors` as a V2 checkpoint at `prefix`, spread over `num_shards` data files."""
    import tensorflow as tf

    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {STORAGE_DTYPES}, got {storage!r}")
    prefix = str(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    shard_prefixes = []
    for shard in range(num_shards):
        shard_names = names[shard::num_shards]
        shard_prefix = f"{prefix}_temp/part-{shard:05d}-of-{num_shards:05d}"
        values = [tf.constant(_stored(n, tensors[n], storage)) for n in shard_names]
        tf.raw_ops.SaveV2(prefix=shard_prefix, tensor_names=shard_names,
                          shape_and_slices=[""] * len(shard_names), tensors=values)
        shard_prefixes.append(shard_prefix)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=shard_prefixes, destination_prefix=prefix,
                                  delete_old_dirs=True)
    return prefix


def write_original_checkpoint(directory: str | Path, depth: int = 50, num_classes: int = 1000,
                              seed: int = 0, storage: str = "float32", ema: bool = True,
                              momentum: bool = True, num_shards: int = 1,
                              extra: dict[str, np.ndarray] | None = None,
                              drop: tuple[str, ...] = ()) -> str:
    """Write a random checkpoint in the tensorflow/tpu layout and return its prefix.

    `extra` adds tensors and `drop` removes tensors by name, for tests of bad checkpoints.
    No `checkpoint` state file is written, as in several official archives.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = checkpoint_tensors(random_variables(depth, num_classes, seed), ema, momentum, seed)
    tensors.update(extra or {})
    for name in drop:
        del tensors[name]
    return save_tensors(directory / "model.ckpt", tensors, num_shards=num_shards, storage=storage)
