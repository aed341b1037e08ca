"""The architecture description against the original manifests and keras-applications."""

import ast
import math

import pytest

from conftest import REFERENCE_DIR, require_reference
from converter import architecture


def read_manifest(depth):
    path = require_reference(REFERENCE_DIR / "manifests") / f"resnet-rs-{depth}.tsv"
    rows = []
    for line in path.read_text().splitlines():
        name, shape = line.split("\t")
        rows.append((name, tuple(ast.literal_eval(shape))))
    return rows


@pytest.mark.parametrize("depth", architecture.DEPTHS)
def test_creation_order_matches_manifest(depth):
    expected = read_manifest(depth)
    actual = architecture.original_variables(depth)
    assert [name for name, _ in actual] == [name for name, _ in expected]
    assert actual == expected


@pytest.mark.parametrize("depth", architecture.DEPTHS)
def test_conv_count_matches_manifest(depth):
    kernels = [n for n, _ in read_manifest(depth) if n.startswith("conv2d") and n.endswith("/kernel")]
    assert architecture.conv_count(depth) == len(kernels)


def test_conv_counts_are_distinct():
    counts = [architecture.conv_count(d) for d in architecture.DEPTHS]
    assert len(set(counts)) == len(counts)


def test_keras_order_moves_projection_after_se():
    names = [layer.name for layer in architecture.layer_specs(50)]
    expand = names.index("BlockGroup3__block_0__se_se_expand")
    assert names[expand + 1] == "BlockGroup3__block_0__projection_conv"
    assert names[expand + 2] == "BlockGroup3__block_0__projection_batch_norm"


def test_notop_drops_only_classifier():
    top = architecture.layer_specs(101)
    notop = architecture.layer_specs(101, include_top=False)
    assert [layer.name for layer in notop] == [layer.name for layer in top[:-1]]
    assert top[-1].name == "predictions"


def test_parameter_count_resnet_rs_50():
    # keras-applications reports 35,745,288 parameters (trainable + BN statistics) for RS-50.
    total = sum(
        math.prod(w.shape)
        for layer in architecture.layer_specs(50) for w in layer.weights)
    assert total == 35_745_288


def test_unknown_depth_rejected():
    with pytest.raises(ValueError, match="Unsupported ResNet-RS depth 34"):
        list(architecture.blocks(34))


def tf_keras_weighted_layers(depth):
    tf_keras = pytest.importorskip("tf_keras")
    builder = getattr(tf_keras.applications, f"ResNetRS{depth}")
    model = builder(weights=None, include_preprocessing=False, input_shape=(64, 64, 3))
    # tf_keras numbers its stem "stem_N" by how many models the process built before.
    return [(layer.name.split("_stem_")[-1] if "_stem_" in layer.name else layer.name,
             [tuple(w.shape) for w in layer.weights])
            for layer in model.layers if layer.weights]


def own_weighted_layers(depth):
    return [(layer.name.split("_stem_")[-1] if "_stem_" in layer.name else layer.name,
             [w.shape for w in layer.weights])
            for layer in architecture.layer_specs(depth)]


@pytest.mark.parametrize("depth", [50, 101])
def test_keras_order_matches_tf_keras(depth):
    assert own_weighted_layers(depth) == tf_keras_weighted_layers(depth)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [152, 200, 270, 350, 420])
def test_keras_order_matches_tf_keras_deep(depth):
    assert own_weighted_layers(depth) == tf_keras_weighted_layers(depth)
