"""Sort a tensorflow/tpu checkpoint's tensors into model variables, shadows and the rest."""

from __future__ import annotations

import dataclasses

from converter import architecture
from converter.errors import CheckpointError

EMA_SUFFIX = "/ExponentialMovingAverage"
MOMENTUM_SUFFIX = "/Momentum"
# Training state that the original eval never restores.
IGNORED_NAMES = frozenset({"global_step"})
WEIGHT_CHOICES = ("ema", "raw")

# Markers of TF2 object-based checkpoints (tf.train.Checkpoint / Keras save_weights).
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_OBJECT_ATTRIBUTE = "/.ATTRIBUTES/"


@dataclasses.dataclass(frozen=True)
class CheckpointContents:
    """A checkpoint's tensor names split by role."""

    model: frozenset[str]        # model variables under their base names
    ema: frozenset[str]          # base names that have an /ExponentialMovingAverage shadow
    momentum: frozenset[str]     # base names that have a /Momentum slot
    ignored: frozenset[str]      # global_step
    orphans: frozenset[str]      # shadows or slots whose base variable is absent

    @property
    def has_ema(self) -> bool:
        return bool(self.ema)

    @property
    def has_momentum(self) -> bool:
        return bool(self.momentum)


def check_tf1_layout(names: list[str], prefix: str) -> None:
    """Raise CheckpointError for TF2 object-based checkpoints."""
    if _OBJECT_GRAPH_KEY in names or any(_OBJECT_ATTRIBUTE in n for n in names):
        raise CheckpointError(
            f"{prefix} is a TF2 object-based checkpoint (tf.train.Checkpoint or Keras "
            "save_weights), not a tensorflow/tpu TF1 checkpoint. rsconvert reads the name-based "
            "checkpoints released with ResNet-RS (variables such as conv2d_5/kernel).")


def split_names(names: list[str]) -> CheckpointContents:
    model, ema, momentum, ignored, shadows = set(), set(), set(), set(), []
    for name in names:
        if name in IGNORED_NAMES:
            ignored.add(name)
        elif name.endswith(EMA_SUFFIX):
            shadows.append((name, name[: -len(EMA_SUFFIX)], ema))
        elif name.endswith(MOMENTUM_SUFFIX):
            shadows.append((name, name[: -len(MOMENTUM_SUFFIX)], momentum))
        else:
            model.add(name)
    orphans = set()
    for name, base, kind in shadows:
        if base in model:
            kind.add(base)
        else:
            orphans.add(name)
    return CheckpointContents(frozenset(model), frozenset(ema), frozenset(momentum),
                              frozenset(ignored), frozenset(orphans))


def detect_depth(reader) -> int:
    """Infer the ResNet-RS depth from the number of conv kernels in the checkpoint."""
    names = reader.names()
    check_tf1_layout(names, reader.prefix)
    present = set(names)
    # Count the contiguous run conv2d, conv2d_1, ... so that a stray extra kernel is reported
    # as unexpected by the name map instead of hiding the depth.
    count = 0
    while f"conv2d_{count}/kernel" in present or (count == 0 and "conv2d/kernel" in present):
        count += 1
    by_count = {architecture.conv_count(d): d for d in architecture.DEPTHS}
    if count in by_count:
        return by_count[count]
    example = ", ".join(names[:5])
    expected = ", ".join(f"{c} for depth {d}" for c, d in sorted(by_count.items()))
    raise CheckpointError(
        f"{reader.prefix} is not a tensorflow/tpu ResNet-RS checkpoint: it has {count} "
        f"conv2d*/kernel variables, but ResNet-RS has {expected}. First tensors: {example}")


def num_classes(reader) -> int:
    if "dense/kernel" not in reader.names():
        raise CheckpointError(f"{reader.prefix} has no dense/kernel variable (the classifier).")
    return int(reader.shape("dense/kernel")[-1])


def source_name(base: str, weights: str) -> str:
    """Return the tensor that supplies model variable `base` for the chosen weights."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    return base + EMA_SUFFIX if weights == "ema" else base
