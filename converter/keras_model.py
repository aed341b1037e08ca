"""ResNet-RS as a Keras 3 functional model, built from `converter.architecture`.

Layer names, layer order and weight order follow keras-applications' ResNet-RS
(`tf_keras.applications.ResNetRS*`), so one legacy-layout `.h5` file loads into both. The
model uses only backend-neutral Keras layers and ops: explicit zero padding then VALID for
strided convs (as tensorflow/tpu's fixed padding), BN epsilon 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from converter import architecture
from converter.architecture import BN_EPSILON, Block
from converter.errors import WeightsFileError
from converter.h5_weights import read_provenance, read_weights

# Keras' convention (moving = m * moving + (1 - m) * batch): 0.99 keeps the ImageNet
# statistics stable when fine-tuning with small batches. Inference does not depend on it.
DEFAULT_BN_MOMENTUM = 0.99
# ImageNet channel statistics on the 0..1 scale, as in tensorflow/tpu resnet_preprocessing.py.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
STAGE_LAYERS = ("stem", "block_group1", "block_group2", "block_group3", "block_group4",
                "pooled", "logits")


@keras.saving.register_keras_serializable(package="rsconvert")
class ImageNetNormalization(layers.Layer):
    """Map pixels in 0..255 to `(x - 255 * mean) / (255 * std)`, the original eval's formula."""

    def call(self, inputs):
        dtype = inputs.dtype
        offset = keras.ops.convert_to_tensor(np.multiply(MEAN_RGB, 255.0), dtype=dtype)
        scale = keras.ops.convert_to_tensor(np.multiply(STDDEV_RGB, 255.0), dtype=dtype)
        return (inputs - offset) / scale


def _conv(x, filters: int, kernel_size: int, strides: int, name: str):
    if strides > 1:
        total = kernel_size - 1
        begin = total // 2
        x = layers.ZeroPadding2D(((begin, total - begin), (begin, total - begin)),
                                 name=name + "_pad")(x)
    return layers.Conv2D(filters, kernel_size, strides=strides,
                         padding="same" if strides == 1 else "valid", use_bias=False,
                         kernel_initializer="he_normal", name=name)(x)


def _batch_norm(x, name: str, momentum: float):
    return layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=BN_EPSILON, name=name)(x)


def _stem(x, momentum: float):
    prefix = architecture.KERAS_STEM_PREFIX
    for i, (filters, strides) in enumerate(architecture.STEM_CONVS, start=1):
        x = _conv(x, filters, 3, strides, f"{prefix}conv_{i}")
        x = _batch_norm(x, f"{prefix}batch_norm_{i}", momentum)
        x = layers.Activation("relu", name=f"{prefix}act_{i}")(x)
    return x


def _squeeze_excite(x, block: Block):
    prefix = block.keras_prefix + "_se"
    se = layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "_se_squeeze")(x)
    se = layers.Conv2D(block.se_filters, 1, activation="relu", name=prefix + "_se_reduce")(se)
    se = layers.Conv2D(block.out_channels, 1, activation="sigmoid",
                       name=prefix + "_se_expand")(se)
    return layers.Multiply(name=prefix + "_se_excite")([x, se])


def _bottleneck(x, block: Block, momentum: float, drop_connect_rate: float):
    prefix = block.keras_prefix
    shortcut = x
    if block.has_projection:
        if block.strides == 2:
            shortcut = layers.AveragePooling2D(2, strides=2, padding="same",
                                               name=prefix + "_projection_pooling")(x)
        shortcut = _conv(shortcut, block.out_channels, 1, 1, prefix + "_projection_conv")
        shortcut = _batch_norm(shortcut, prefix + "_projection_batch_norm", momentum)

    y = _conv(x, block.filters, 1, 1, prefix + "_conv_1")
    y = _batch_norm(y, prefix + "batch_norm_1", momentum)
    y = layers.Activation("relu", name=prefix + "_act_1")(y)
    y = _conv(y, block.filters, 3, block.strides, prefix + "_conv_2")
    y = _batch_norm(y, prefix + "_batch_norm_2", momentum)
    y = layers.Activation("relu", name=prefix + "_act_2")(y)
    y = _conv(y, block.out_channels, 1, 1, prefix + "_conv_3")
    y = _batch_norm(y, prefix + "_batch_norm_3", momentum)
    y = _squeeze_excite(y, block)
    if drop_connect_rate > 0:
        # Stochastic depth for fine-tuning: drops the whole residual branch per example.
        y = layers.Dropout(drop_connect_rate, noise_shape=(None, 1, 1, 1),
                           name=prefix + "_drop")(y)
    y = layers.Add(name=prefix + "_add")([y, shortcut])
    return layers.Activation("relu", name=prefix + "_output_act")(y)


def ResNetRS(depth: int, include_top: bool = True, input_shape=None, classes: int = 1000,
             include_preprocessing: bool = False, classifier_activation="softmax",
             pooling: str | None = None, bn_momentum: float = DEFAULT_BN_MOMENTUM,
             dropout_rate: float = 0.25, drop_connect_rate: float = 0.0,
             weights: str | Path | None = None, dtype=None, name: str | None = None):
    """Build a Keras 3 ResNet-RS of `depth` (50, 101, 152, 200, 270, 350 or 420).

    With include_preprocessing the model takes RGB pixels in 0..255 and applies the original
    normalization; without it, it takes already normalized images. The head returns softmax
    probabilities by default (`classifier_activation=None` gives logits), after dropout of
    `dropout_rate` during training. `pooling` ("avg" or "max") applies only without the top.
    `drop_connect_rate` drops whole residual branches during training (0 disables it).
    `weights` is an optional `.h5` in the legacy layout with these layer names, such as one
    written by rsconvert; without the top, its classifier is skipped. `dtype` is a Keras dtype
    policy such as "mixed_bfloat16".
    """
    architecture.check_depth(depth)
    if isinstance(weights, str) and weights == "imagenet":
        raise WeightsFileError("ResNetRS downloads no weights; convert an official checkpoint "
                               "with `rsconvert ckpt-to-h5` and pass the .h5 path as weights.")
    inputs = keras.Input(shape=tuple(input_shape) if input_shape else (None, None, 3),
                         name="input_layer")
    x = inputs
    if include_preprocessing:
        x = ImageNetNormalization(name="imagenet_normalization")(x)
    with _dtype_policy(dtype):
        x = _stem(x, bn_momentum)
        for block in architecture.blocks(depth):
            x = _bottleneck(x, block, bn_momentum, drop_connect_rate)
        if include_top:
            x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
            if dropout_rate > 0:
                x = layers.Dropout(dropout_rate, name="top_dropout")(x)
            x = layers.Dense(classes, name=architecture.KERAS_CLASSIFIER, dtype="float32")(x)
            if classifier_activation is not None:
                x = layers.Activation(classifier_activation, dtype="float32",
                                      name="predictions_activation")(x)
        elif pooling == "avg":
            x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        elif pooling == "max":
            x = layers.GlobalMaxPooling2D(name="max_pool")(x)
        elif pooling is not None:
            raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    model = keras.Model(inputs, x, name=name or f"resnet-rs-{depth}")
    if weights is not None:
        assign_weights(model, weights,
                       skip_layers=() if include_top else (architecture.KERAS_CLASSIFIER,))
    return model


class _dtype_policy:
    """Apply a Keras dtype policy while layers are created, then restore the previous one."""

    def __init__(self, policy):
        self.policy = policy

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        if self.policy is not None:
            keras.config.set_dtype_policy(self.policy)

    def __exit__(self, *exc_info):
        keras.config.set_dtype_policy(self.previous)


def assign_weights(model: keras.Model, path: str | Path, skip_layers: tuple[str, ...] = ()) -> None:
    """Load an rsconvert `.h5` into `model` by layer name, checking names and shapes.

    Layers named in `skip_layers` are ignored in the file, e.g. the classifier when a
    model without top is built from a file with one.
    """
    stored = read_weights(path)
    for name in skip_layers:
        stored.pop(name, None)
    by_name = {layer.name: layer for layer in model.layers if layer.weights}
    missing = sorted(set(by_name) - set(stored))
    unexpected = sorted(set(stored) - set(by_name))
    if missing or unexpected:
        raise WeightsFileError(
            f"{path} does not match model {model.name}: "
            f"{len(missing)} model layers missing from the file ({', '.join(missing[:10])}), "
            f"{len(unexpected)} file layers not in the model ({', '.join(unexpected[:10])})")
    for name, layer in by_name.items():
        arrays = stored[name]
        shapes = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != shapes:
            raise WeightsFileError(
                f"{path}: layer {name} stores shapes {[a.shape for a in arrays]}, the model "
                f"expects {shapes}")
        layer.set_weights(arrays)


def load_weights_file(path: str | Path, input_shape=None, classifier_activation=None,
                      include_top: bool | None = None, include_preprocessing: bool = False,
                      pooling: str | None = None, dtype=None) -> keras.Model:
    """Build the ResNet-RS that an rsconvert `.h5` describes and load the file into it.

    Unlike ResNetRS, the head returns logits by default. `pooling` ("avg" or "max") applies
    only to a model without top, as in ResNetRS. For fine-tuning options (bn_momentum,
    dropout_rate, drop_connect_rate) build `ResNetRS(..., weights=path)` instead.
    """
    provenance = read_provenance(path)
    if include_top is None:
        include_top = provenance["include_top"]
    elif include_top and not provenance["include_top"]:
        raise WeightsFileError(f"{path} is a notop file (no classifier); it cannot build a "
                               "model with include_top=True.")
    model = ResNetRS(int(provenance["depth"]), include_top=include_top, input_shape=input_shape,
                     classes=int(provenance["num_classes"]),
                     classifier_activation=classifier_activation,
                     include_preprocessing=include_preprocessing, pooling=pooling, dtype=dtype)
    skip = () if include_top else (architecture.KERAS_CLASSIFIER,)
    assign_weights(model, path, skip_layers=skip)
    return model


def stage_outputs_model(model: keras.Model) -> keras.Model:
    """Return a model with the same input whose outputs are the stage outputs by name.

    Stages: stem, the last block of each group, pooled features and logits (pre-softmax).
    """
    depth_blocks = {}
    for layer in model.layers:
        if layer.name.endswith("__output_act"):
            group = layer.name.split("__")[0]
            depth_blocks[group] = layer
    outputs = {"stem": model.get_layer(architecture.KERAS_STEM_PREFIX + "act_4").output}
    for i, group in enumerate(sorted(depth_blocks), start=1):
        outputs[f"block_group{i}"] = depth_blocks[group].output
    names = {layer.name for layer in model.layers}
    if "avg_pool" in names:
        outputs["pooled"] = model.get_layer("avg_pool").output
    if architecture.KERAS_CLASSIFIER in names:
        outputs["logits"] = model.get_layer(architecture.KERAS_CLASSIFIER).output
    return keras.Model(model.inputs, outputs, name=model.name + "_stages")
