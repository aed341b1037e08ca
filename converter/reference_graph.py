"""The tensorflow/tpu ResNet-RS forward pass, rebuilt from a checkpoint's own variable names.

This is the independent witness for parity checks, so it shares no code or tables with the
Keras model or the name map. It follows tensorflow/tpu `resnet_model.py` and
`resnet_layers.py` in inference mode, with the ResNet-RS options: a ResNet-D stem whose max
pool is replaced by a stride-2 conv, ResNet-D shortcuts, squeeze-and-excitation ratio 0.25
and channels_last. Each weight is taken by the TF1 auto-name that the original code gave it.
Those names are handed out per layer type in creation order: `conv2d`, `conv2d_1`, ... and
`batch_normalization`, `batch_normalization_1`, ..., then `dense`.

Creation order inside a bottleneck block: [projection conv, BN] in the first block of a
group, conv 1x1, BN, conv 3x3 (carries the stride), BN, conv 1x1, BN, SE reduce conv,
SE expand conv.

Precision "bfloat16" reproduces how the TPU ran the graph under `bfloat16_scope` (see
`_Rounding`); "float32" is the plain graph.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from converter.errors import CheckpointError, RsconvertError

logger = logging.getLogger(__name__)

# Blocks per block group, from `resnet_model.resnet()` in tensorflow/tpu. This copy is
# separate from converter.architecture on purpose, so the witness shares nothing with the
# Keras model or the name map.
ORIGINAL_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    350: (4, 36, 72, 4),
    420: (4, 44, 87, 4),
}
# Bottleneck width of block groups 1..4 and the stride of their first block.
GROUP_WIDTHS = (64, 128, 256, 512)
GROUP_STRIDES = (1, 2, 2, 2)
# (kernel size, filters, stride) of the stem convs; the last one replaces the max pool.
STEM_CONVS = ((3, 32, 2), (3, 32, 1), (3, 64, 1), (3, 64, 2))
BN_EPSILON = 1e-5
SE_RATIO = 0.25
IMAGE_CHANNELS = 3

# Per-stage outputs, in network order.
STAGES = ("stem", "block_group1", "block_group2", "block_group3", "block_group4", "pooled",
          "logits")
PRECISIONS = ("float32", "bfloat16")

# Convs per network: 4 in the stem, 5 per block (3 + 2 SE convs), 4 projections.
_STEM_AND_PROJECTION_CONVS = len(STEM_CONVS) + len(GROUP_WIDTHS)
_CONVS_PER_BLOCK = 5
_CONV_KERNEL = re.compile(r"^conv2d(_\d+)?/kernel$")
_MODEL_VARIABLE = re.compile(r"^(conv2d|batch_normalization|dense)(_\d+)?/")


def conv_count(depth: int) -> int:
    """Return how many conv kernels the original graph of this depth creates."""
    return _STEM_AND_PROJECTION_CONVS + _CONVS_PER_BLOCK * sum(ORIGINAL_LAYERS[depth])


def depth_from_variables(variables: Mapping[str, np.ndarray]) -> int:
    """Infer the network depth from the number of `conv2d*/kernel` variables."""
    count = sum(1 for name in variables if _CONV_KERNEL.match(name))
    for depth in ORIGINAL_LAYERS:
        if conv_count(depth) == count:
            return depth
    expected = ", ".join(f"{conv_count(d)} (ResNet-RS-{d})" for d in ORIGINAL_LAYERS)
    raise CheckpointError(
        f"Cannot infer the ResNet-RS depth: the checkpoint has {count} conv kernels, "
        f"expected one of {expected}. Is this a tensorflow/tpu ResNet-RS checkpoint?")


# Tensors are None in a walk that only checks the variables.
@dataclasses.dataclass(frozen=True)
class _Conv:
    kernel: tf.Tensor | None
    stride: int
    bias: tf.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class _BatchNorm:
    """Inference batch norm folded to `x * scale + offset`, as TF's fused kernel computes it."""

    scale: tf.Tensor | None
    offset: tf.Tensor | None


@dataclasses.dataclass(frozen=True)
class _Block:
    projection: tuple[_Conv, _BatchNorm] | None
    # True when the projection starts with the ResNet-D 2x2 average pool.
    projection_pool: bool
    convs: tuple[tuple[_Conv, _BatchNorm], ...]
    se_reduce: _Conv
    se_expand: _Conv


class _Rounding:
    """Rounding to bfloat16 as the TPU ran the graph under `tf.tpu.bfloat16_scope`.

    In that scope conv and dense kernels and biases are read as bfloat16 and every tensor
    between ops is bfloat16. The TPU matrix unit multiplies bfloat16 operands exactly and
    accumulates in float32, and XLA computes fused batch norm, means and pools in float32
    from bfloat16 inputs. BN variables stay float32 because Keras keeps batch norm
    parameters of bfloat16 layers in float32. So the emulation keeps float32 arithmetic on
    bfloat16-rounded weights and rounds each op's output to bfloat16. The normalized input
    is rounded once, where the TPU rounded 0..255 pixels and normalized in bfloat16; the two
    differ by about one bfloat16 step.
    NOTE: XLA may fuse neighbouring element-wise ops and skip a rounding between them, so
    this matches a TPU run closely but not bit for bit.
    """

    def __init__(self, precision: str):
        self.enabled = precision == "bfloat16"

    def __call__(self, tensor: tf.Tensor) -> tf.Tensor:
        if not self.enabled:
            return tensor
        return tf.cast(tf.cast(tensor, tf.bfloat16), tf.float32)

    def weight(self, array: np.ndarray) -> tf.Tensor:
        return self(tf.constant(np.asarray(array, dtype=np.float32)))


class _VariableWalker:
    """Hands out the original auto-names in creation order and checks each variable."""

    def __init__(self, variables: Mapping[str, np.ndarray], rounding: _Rounding | None):
        self._variables = variables
        # Without rounding the walk only checks names and shapes and builds no tensors.
        self._rounding = rounding
        self._counters = {"conv2d": 0, "batch_normalization": 0}
        self.used: list[str] = []

    def _next_name(self, layer: str) -> str:
        index = self._counters[layer]
        self._counters[layer] += 1
        return layer if index == 0 else f"{layer}_{index}"

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self._variables:
            raise CheckpointError(f"Missing checkpoint variable {name!r} (expected shape "
                                  f"{list(shape) if shape else '?'}); the checkpoint does not "
                                  "match the tensorflow/tpu ResNet-RS graph of this depth.")
        array = np.asarray(self._variables[name])
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise CheckpointError(f"Checkpoint variable {name!r} has shape {list(array.shape)}, "
                                  f"expected {list(shape)} for this ResNet-RS depth.")
        self.used.append(name)
        return array

    def _weight(self, array: np.ndarray) -> tf.Tensor | None:
        return None if self._rounding is None else self._rounding.weight(array)

    def conv(self, kernel_size: int, in_channels: int, filters: int, stride: int = 1,
             bias: bool = False) -> _Conv:
        name = self._next_name("conv2d")
        kernel = self.take(f"{name}/kernel", (kernel_size, kernel_size, in_channels, filters))
        bias_tensor = None
        if bias:
            bias_tensor = self._weight(self.take(f"{name}/bias", (filters,)))
        return _Conv(self._weight(kernel), stride, bias_tensor)

    def batch_norm(self, channels: int) -> _BatchNorm:
        name = self._next_name("batch_normalization")
        gamma, beta, mean, variance = (self.take(f"{name}/{weight}", (channels,)) for weight in
                                       ("gamma", "beta", "moving_mean", "moving_variance"))
        if self._rounding is None:
            return _BatchNorm(None, None)
        gamma, beta, mean, variance = (tf.constant(np.asarray(a, dtype=np.float32))
                                       for a in (gamma, beta, mean, variance))
        scale = tf.math.rsqrt(variance + BN_EPSILON) * gamma
        return _BatchNorm(scale, beta - mean * scale)

    def dense(self, in_features: int) -> tuple[tf.Tensor | None, tf.Tensor | None, int]:
        kernel = self.take("dense/kernel")
        if kernel.ndim != 2 or kernel.shape[0] != in_features:
            raise CheckpointError(f"Checkpoint variable 'dense/kernel' has shape "
                                  f"{list(kernel.shape)}, expected [{in_features}, classes].")
        num_classes = int(kernel.shape[1])
        bias = self.take("dense/bias", (num_classes,))
        return self._weight(kernel), self._weight(bias), num_classes


def _walk_network(walker: _VariableWalker, depth: int):
    """Take every variable in the original creation order: stem, block groups, classifier."""
    stem = []
    channels = IMAGE_CHANNELS
    for kernel_size, filters, stride in STEM_CONVS:
        conv = walker.conv(kernel_size, channels, filters, stride)
        stem.append((conv, walker.batch_norm(filters)))
        channels = filters

    groups = []
    for width, group_stride, repeats in zip(GROUP_WIDTHS, GROUP_STRIDES, ORIGINAL_LAYERS[depth]):
        blocks = []
        for index in range(repeats):
            stride = group_stride if index == 0 else 1
            blocks.append(_walk_block(walker, channels, width, stride, index == 0))
            channels = 4 * width
        groups.append(blocks)

    return stem, groups, walker.dense(channels)


def _walk_block(walker: _VariableWalker, in_channels: int, width: int, stride: int,
                first: bool) -> _Block:
    out_channels = 4 * width
    projection = None
    if first:
        # With the ResNet-D shortcut a stride-2 projection pools first, then uses a stride-1
        # 1x1 conv; a stride-1 projection is a plain 1x1 conv.
        conv = walker.conv(1, in_channels, out_channels, 1)
        projection = (conv, walker.batch_norm(out_channels))
    convs = []
    for kernel_size, conv_in, conv_out, conv_stride in ((1, in_channels, width, 1),
                                                        (3, width, width, stride),
                                                        (1, width, out_channels, 1)):
        conv = walker.conv(kernel_size, conv_in, conv_out, conv_stride)
        convs.append((conv, walker.batch_norm(conv_out)))
    se_filters = max(1, int(out_channels * SE_RATIO))
    se_reduce = walker.conv(1, out_channels, se_filters, bias=True)
    se_expand = walker.conv(1, se_filters, out_channels, bias=True)
    return _Block(projection, first and stride == 2, tuple(convs), se_reduce, se_expand)


@dataclasses.dataclass(frozen=True)
class VariableCheck:
    """Depth, class count and variable names in original creation order of a checkpoint."""

    depth: int
    num_classes: int
    names: tuple[str, ...]


def check_variables(variables: Mapping[str, np.ndarray],
                    depth: int | None = None) -> VariableCheck:
    """Check names and shapes against the original graph without building it.

    Raises CheckpointError naming the first missing or mis-shaped variable, or listing
    model variables that the graph does not use.
    """
    depth = _resolve_depth(variables, depth)
    walker = _VariableWalker(variables, None)
    _, _, (_, _, num_classes) = _walk_network(walker, depth)
    _check_unused(variables, walker.used, depth)
    return VariableCheck(depth, num_classes, tuple(walker.used))


@dataclasses.dataclass(frozen=True)
class ReferenceOutputs:
    """Per-stage outputs of the original graph, float32, keyed by the names in STAGES."""

    stages: dict[str, np.ndarray]

    @property
    def logits(self) -> np.ndarray:
        return self.stages["logits"]


class ReferenceNetwork:
    """The original ResNet-RS graph in inference mode, built from checkpoint variables.

    `variables` maps base names (`conv2d_5/kernel`, `batch_normalization_3/gamma`,
    `dense/bias`, ...) to arrays. `depth` is inferred from the conv count when omitted.
    Raises CheckpointError naming the first missing or mis-shaped variable.
    """

    def __init__(self, variables: Mapping[str, np.ndarray], depth: int | None = None,
                 precision: str = "float32"):
        if precision not in PRECISIONS:
            raise RsconvertError(f"Invalid precision {precision!r}; expected one of "
                                 f"{', '.join(PRECISIONS)}.")
        depth = _resolve_depth(variables, depth)
        self.depth = depth
        self.precision = precision
        self._round = _Rounding(precision)

        walker = _VariableWalker(variables, self._round)
        self._stem, self._groups, (self._dense_kernel, self._dense_bias, self.num_classes) = (
            _walk_network(walker, depth))
        _check_unused(variables, walker.used, depth)

        self._forward = tf.function(
            self._forward_graph,
            input_signature=[tf.TensorSpec([None, None, None, IMAGE_CHANNELS], tf.float32)])
        logger.debug("Built the original ResNet-RS-%d graph (%s, %d classes)", depth,
                     precision, self.num_classes)

    # Forward pass ---------------------------------------------------------------------

    def _conv(self, inputs: tf.Tensor, conv: _Conv) -> tf.Tensor:
        if conv.stride > 1:
            # Fixed padding: pad k-1 in total, the smaller half first, then VALID.
            kernel_size = int(conv.kernel.shape[0])
            pad_total = kernel_size - 1
            pad_begin = pad_total // 2
            pad_end = pad_total - pad_begin
            inputs = tf.pad(inputs, [[0, 0], [pad_begin, pad_end], [pad_begin, pad_end], [0, 0]])
            outputs = tf.nn.conv2d(inputs, conv.kernel, conv.stride, "VALID")
        else:
            outputs = tf.nn.conv2d(inputs, conv.kernel, 1, "SAME")
        outputs = self._round(outputs)
        if conv.bias is not None:
            outputs = self._round(tf.nn.bias_add(outputs, conv.bias))
        return outputs

    def _batch_norm(self, inputs: tf.Tensor, norm: _BatchNorm, relu: bool) -> tf.Tensor:
        outputs = self._round(inputs * norm.scale + norm.offset)
        return tf.nn.relu(outputs) if relu else outputs

    def _block(self, inputs: tf.Tensor, block: _Block) -> tf.Tensor:
        shortcut = inputs
        if block.projection is not None:
            if block.projection_pool:
                shortcut = self._round(tf.nn.avg_pool2d(inputs, 2, 2, "SAME"))
            conv, norm = block.projection
            shortcut = self._batch_norm(self._conv(shortcut, conv), norm, relu=False)

        outputs = inputs
        last = len(block.convs) - 1
        for index, (conv, norm) in enumerate(block.convs):
            outputs = self._batch_norm(self._conv(outputs, conv), norm, relu=index != last)

        squeezed = self._round(tf.reduce_mean(outputs, [1, 2], keepdims=True))
        squeezed = tf.nn.relu(self._conv(squeezed, block.se_reduce))
        gate = self._round(tf.sigmoid(self._conv(squeezed, block.se_expand)))
        outputs = self._round(gate * outputs)
        return tf.nn.relu(self._round(outputs + shortcut))

    def _forward_graph(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        stages = {}
        outputs = self._round(images)
        for conv, norm in self._stem:
            outputs = self._batch_norm(self._conv(outputs, conv), norm, relu=True)
        stages["stem"] = outputs
        for number, blocks in enumerate(self._groups, start=1):
            for block in blocks:
                outputs = self._block(outputs, block)
            stages[f"block_group{number}"] = outputs
        # The original pools with a VALID average pool over the whole feature map.
        pooled = self._round(tf.reduce_mean(outputs, [1, 2]))
        stages["pooled"] = pooled
        # Dropout is the identity at inference.
        logits = self._round(tf.matmul(pooled, self._dense_kernel))
        stages["logits"] = self._round(tf.nn.bias_add(logits, self._dense_bias))
        return stages

    def __call__(self, images: np.ndarray, batch_size: int = 16) -> ReferenceOutputs:
        """Run normalized float32 images [N, H, W, 3] through the graph in batches."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[-1] != IMAGE_CHANNELS or images.shape[0] == 0:
            raise RsconvertError(f"Invalid input shape {list(images.shape)}; expected a "
                                 "non-empty batch [N, height, width, 3] of normalized images.")
        if batch_size < 1:
            raise RsconvertError(f"Invalid batch size {batch_size!r}; expected 1 or more.")
        parts: dict[str, list[np.ndarray]] = {stage: [] for stage in STAGES}
        for start in range(0, images.shape[0], batch_size):
            outputs = self._forward(tf.constant(images[start:start + batch_size]))
            for stage in STAGES:
                parts[stage].append(outputs[stage].numpy())
        return ReferenceOutputs({stage: np.concatenate(parts[stage]) for stage in STAGES})


def _resolve_depth(variables: Mapping[str, np.ndarray], depth: int | None) -> int:
    if depth is None:
        return depth_from_variables(variables)
    if depth not in ORIGINAL_LAYERS:
        raise RsconvertError(f"Invalid ResNet-RS depth {depth!r}; expected one of "
                             f"{', '.join(map(str, ORIGINAL_LAYERS))}.")
    count = sum(1 for name in variables if _CONV_KERNEL.match(name))
    if count != conv_count(depth):
        raise CheckpointError(
            f"The checkpoint has {count} conv kernels but ResNet-RS-{depth} has "
            f"{conv_count(depth)}; pass the checkpoint's depth or omit it to infer it.")
    return depth


def _check_unused(variables: Mapping[str, np.ndarray], used: list[str], depth: int) -> None:
    used_names = set(used)
    unused = sorted(name for name in variables
                    if _MODEL_VARIABLE.match(name) and name not in used_names)
    if unused:
        listed = ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else "")
        raise CheckpointError(f"The checkpoint has {len(unused)} model variables that the "
                              f"ResNet-RS-{depth} graph does not use: {listed}. It is not a plain "
                              "tensorflow/tpu ResNet-RS checkpoint.")


def run_reference(variables: Mapping[str, np.ndarray], images: np.ndarray,
                  depth: int | None = None, precision: str = "float32",
                  batch_size: int = 16) -> ReferenceOutputs:
    """Build the original graph from `variables` and run `images` through it."""
    return ReferenceNetwork(variables, depth, precision)(images, batch_size)
