"""The ResNet-RS architecture as data: one description for the name map and the Keras model.

The network is the tensorflow/tpu `resnet_model.py` ResNet with the ResNet-RS options. Its
stem is the ResNet-D one: three 3x3 convs, then a stride-2 3x3 conv in place of the max
pool. The first bottleneck block of each group has a projection shortcut (2x2 average pool,
then a 1x1 conv, in strided groups). Squeeze-and-excitation with ratio 0.25 follows the last
batch norm of every block, and the head is global average pooling and a dense classifier.

Two orders of the same layers matter:

* creation order, in which TF1 handed out the auto-names `conv2d`, `conv2d_1`, ...,
  `batch_normalization_N` and `dense` (the projection shortcut is created first in a block,
  the SE reduce conv before the SE expand conv);
* Keras order, the order of the weighted layers in `model.layers` of keras-applications'
  ResNet-RS, which the legacy HDF5 loaders use to match layers by position. It equals
  creation order except that a block's projection shortcut comes after its SE convs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

BLOCK_REPEATS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    350: (4, 36, 72, 4),
    420: (4, 44, 87, 4),
}
DEPTHS = tuple(sorted(BLOCK_REPEATS))

# Bottleneck width of each block group; every block outputs 4x as many channels.
GROUP_FILTERS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
# (filters, stride) of the four ResNet-D stem convs; the last replaces the max pool.
STEM_CONVS = ((32, 2), (32, 1), (64, 1), (64, 2))
SE_RATIO = 0.25
BN_EPSILON = 1e-5
FEATURE_CHANNELS = GROUP_FILTERS[-1] * BOTTLENECK_EXPANSION
# Keras names of the BN weights, in the order keras.layers.BatchNormalization stores them.
BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")

KERAS_STEM_PREFIX = "stem_1_stem_"
KERAS_CLASSIFIER = "predictions"


@dataclasses.dataclass(frozen=True)
class Block:
    """One bottleneck block: `group` counts from 0, `index` within the group from 0."""

    group: int
    index: int
    in_channels: int
    filters: int
    strides: int

    @property
    def out_channels(self) -> int:
        return self.filters * BOTTLENECK_EXPANSION

    @property
    def has_projection(self) -> bool:
        return self.index == 0

    @property
    def se_filters(self) -> int:
        return max(1, int(self.out_channels * SE_RATIO))

    @property
    def keras_prefix(self) -> str:
        # keras-applications names blocks "BlockGroup{2..5}__block_{i}_" and then appends
        # suffixes with an inconsistent leading underscore ("batch_norm_1" has none).
        return f"BlockGroup{self.group + 2}__block_{self.index}_"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One weight of a Keras layer and the checkpoint variable that fills it."""

    keras_name: str
    original_name: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One weighted Keras layer; `kind` is "conv", "batch_norm" or "dense"."""

    name: str
    kind: str
    weights: tuple[WeightSpec, ...]


def check_depth(depth: int) -> None:
    if depth not in BLOCK_REPEATS:
        raise ValueError(f"Unsupported ResNet-RS depth {depth}; expected one of {DEPTHS}.")


def blocks(depth: int) -> Iterator[Block]:
    """Yield the bottleneck blocks of a depth in network order."""
    check_depth(depth)
    in_channels = STEM_CONVS[-1][0]
    for group, (repeats, filters) in enumerate(zip(BLOCK_REPEATS[depth], GROUP_FILTERS)):
        for index in range(repeats):
            strides = 2 if (group > 0 and index == 0) else 1
            block = Block(group, index, in_channels, filters, strides)
            yield block
            in_channels = block.out_channels


def conv_count(depth: int) -> int:
    """Return how many `conv2d*` variables a checkpoint of this depth has."""
    repeats = BLOCK_REPEATS[depth]
    # Per block: 3 bottleneck convs + 2 SE convs; one projection conv per group.
    return len(STEM_CONVS) + 5 * sum(repeats) + len(repeats)


class _OriginalNames:
    """Hands out TF1 auto-names in creation order: `conv2d`, `conv2d_1`, ..."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def next(self, base: str) -> str:
        count = self._counts.get(base, 0)
        self._counts[base] = count + 1
        return base if count == 0 else f"{base}_{count}"


def _conv(name: str, original: str, kernel: int, cin: int, cout: int, bias: bool) -> LayerSpec:
    weights = [WeightSpec("kernel", f"{original}/kernel", (kernel, kernel, cin, cout))]
    if bias:
        weights.append(WeightSpec("bias", f"{original}/bias", (cout,)))
    return LayerSpec(name, "conv", tuple(weights))


def _batch_norm(name: str, original: str, channels: int) -> LayerSpec:
    weights = tuple(WeightSpec(w, f"{original}/{w}", (channels,)) for w in BN_WEIGHTS)
    return LayerSpec(name, "batch_norm", weights)


def _block_layers(block: Block, names: _OriginalNames) -> tuple[list[LayerSpec], list[LayerSpec]]:
    """Return a block's (projection layers, main-path layers), each in creation order."""
    prefix = block.keras_prefix
    projection: list[LayerSpec] = []
    if block.has_projection:
        projection = [
            _conv(prefix + "_projection_conv", names.next("conv2d"), 1,
                  block.in_channels, block.out_channels, bias=False),
            _batch_norm(prefix + "_projection_batch_norm",
                        names.next("batch_normalization"), block.out_channels),
        ]
    f, out = block.filters, block.out_channels
    main = [
        _conv(prefix + "_conv_1", names.next("conv2d"), 1, block.in_channels, f, bias=False),
        _batch_norm(prefix + "batch_norm_1", names.next("batch_normalization"), f),
        _conv(prefix + "_conv_2", names.next("conv2d"), 3, f, f, bias=False),
        _batch_norm(prefix + "_batch_norm_2", names.next("batch_normalization"), f),
        _conv(prefix + "_conv_3", names.next("conv2d"), 1, f, out, bias=False),
        _batch_norm(prefix + "_batch_norm_3", names.next("batch_normalization"), out),
        _conv(prefix + "_se_se_reduce", names.next("conv2d"), 1, out, block.se_filters, bias=True),
        _conv(prefix + "_se_se_expand", names.next("conv2d"), 1, block.se_filters, out, bias=True),
    ]
    return projection, main


def stem_layers(names: _OriginalNames | None = None) -> list[LayerSpec]:
    names = names or _OriginalNames()
    layers = []
    in_channels = 3
    for i, (filters, _) in enumerate(STEM_CONVS, start=1):
        layers.append(_conv(f"{KERAS_STEM_PREFIX}conv_{i}", names.next("conv2d"), 3,
                            in_channels, filters, bias=False))
        layers.append(_batch_norm(f"{KERAS_STEM_PREFIX}batch_norm_{i}",
                                  names.next("batch_normalization"), filters))
        in_channels = filters
    return layers


def classifier_layer(num_classes: int) -> LayerSpec:
    return LayerSpec(KERAS_CLASSIFIER, "dense", (
        WeightSpec("kernel", "dense/kernel", (FEATURE_CHANNELS, num_classes)),
        WeightSpec("bias", "dense/bias", (num_classes,)),
    ))


def layer_specs(depth: int, num_classes: int = 1000, include_top: bool = True,
                order: str = "keras") -> list[LayerSpec]:
    """Return every weighted layer of a ResNet-RS, in "keras" or "creation" order."""
    if order not in ("keras", "creation"):
        raise ValueError(f"order must be 'keras' or 'creation', got {order!r}")
    names = _OriginalNames()
    layers = stem_layers(names)
    for block in blocks(depth):
        projection, main = _block_layers(block, names)
        layers.extend(projection + main if order == "creation" else main + projection)
    if include_top:
        layers.append(classifier_layer(num_classes))
    return layers


def original_variables(depth: int, num_classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """Return (name, shape) of every model variable in the original creation order."""
    return [(w.original_name, w.shape)
            for layer in layer_specs(depth, num_classes, order="creation")
            for w in layer.weights]
