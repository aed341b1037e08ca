"""The original graph: golden logits, creation-order names for every depth, bad variables."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDEN_DIR, REFERENCE_DIR, require_reference
from converter import architecture
from converter.errors import CheckpointError, RsconvertError
from converter.reference_graph import (ORIGINAL_LAYERS, STAGES, ReferenceNetwork,
                                       check_variables, conv_count, depth_from_variables)

# Relative to the largest |logit|: float32 summation order differs between TF1 graph ops
# and the ops used here.
GOLDEN_TOLERANCE = 5e-5


def read_manifest(depth: int) -> list[tuple[str, tuple[int, ...]]]:
    path = require_reference(REFERENCE_DIR / "manifests" / f"resnet-rs-{depth}.tsv")
    rows = []
    for line in path.read_text().splitlines():
        name, shape = line.split("\t")
        rows.append((name, tuple(json.loads(shape))))
    return rows


def zero_variables(rows) -> dict[str, np.ndarray]:
    # Broadcast views take no memory, so even ResNet-RS-420 costs nothing to describe.
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in rows}


@pytest.fixture(scope="module")
def golden_variables(golden_checkpoint):
    from converter.checkpoint import load_model_variables

    return {weights: load_model_variables(golden_checkpoint, weights) for weights in ("ema", "raw")}


@pytest.fixture(scope="module")
def golden_inputs():
    return np.load(require_reference(GOLDEN_DIR) / "inputs.npy")


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_golden_logits(weights, golden_variables, golden_inputs):
    expected = np.load(GOLDEN_DIR / f"logits_{weights}.npy")
    logits = ReferenceNetwork(golden_variables[weights])(golden_inputs).logits
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() <= GOLDEN_TOLERANCE * np.abs(expected).max()


def test_golden_stage_shapes(golden_variables, golden_inputs):
    outputs = ReferenceNetwork(golden_variables["ema"], depth=50)(golden_inputs)
    # 160 px: the stem halves twice (40), groups 2-4 halve again.
    expected = {
        "stem": (2, 40, 40, 64),
        "block_group1": (2, 40, 40, 256),
        "block_group2": (2, 20, 20, 512),
        "block_group3": (2, 10, 10, 1024),
        "block_group4": (2, 5, 5, 2048),
        "pooled": (2, 2048),
        "logits": (2, 1000),
    }
    assert tuple(outputs.stages) == STAGES
    for stage, shape in expected.items():
        assert outputs.stages[stage].shape == shape, stage
        assert outputs.stages[stage].dtype == np.float32, stage


def test_odd_batch_sizes(golden_variables, golden_inputs):
    network = ReferenceNetwork(golden_variables["ema"])
    images = np.concatenate([golden_inputs, golden_inputs[:1]])
    whole = network(images, batch_size=3).logits
    split = network(images, batch_size=2).logits
    assert whole.shape == (3, 1000)
    assert np.abs(whole - split).max() <= GOLDEN_TOLERANCE * np.abs(whole).max()
    assert np.abs(whole[2] - whole[0]).max() <= GOLDEN_TOLERANCE * np.abs(whole).max()


def test_other_image_size(golden_variables, golden_inputs):
    outputs = ReferenceNetwork(golden_variables["ema"])(golden_inputs[:, :97, :131])
    # Odd sizes: every stride-2 step rounds up, 97 -> 49 -> 25 -> 13 -> 7 -> 4.
    assert outputs.stages["block_group4"].shape == (2, 4, 5, 2048)
    assert np.isfinite(outputs.logits).all()


def test_bfloat16_close_not_equal(golden_variables, golden_inputs):
    variables = golden_variables["ema"]
    float32 = ReferenceNetwork(variables)(golden_inputs).logits
    bfloat16 = ReferenceNetwork(variables, precision="bfloat16")(golden_inputs).logits
    relative = np.abs(bfloat16 - float32).max() / np.abs(float32).max()
    assert bfloat16.dtype == np.float32
    assert relative > 1e-4
    assert relative < 0.1
    assert np.array_equal(bfloat16.argmax(-1), float32.argmax(-1))


def test_bfloat16_stages_are_bfloat16(golden_variables, golden_inputs):
    import ml_dtypes

    outputs = ReferenceNetwork(golden_variables["ema"], precision="bfloat16")(golden_inputs[:1])
    for stage, values in outputs.stages.items():
        rounded = values.astype(ml_dtypes.bfloat16).astype(np.float32)
        assert np.array_equal(rounded, values), stage


@pytest.mark.parametrize("depth", sorted(ORIGINAL_LAYERS))
def test_manifest_creation_order(depth):
    rows = read_manifest(depth)
    described = check_variables(zero_variables(rows))
    assert described.depth == depth
    assert described.num_classes == 1000
    assert list(described.names) == [name for name, _ in rows]


@pytest.mark.parametrize("depth", sorted(ORIGINAL_LAYERS))
def test_agrees_with_architecture(depth):
    rows = list(architecture.original_variables(depth, 10))
    described = check_variables(zero_variables(rows), depth)
    assert described.num_classes == 10
    assert list(described.names) == [name for name, _ in rows]


def test_conv_counts_distinct():
    counts = [conv_count(depth) for depth in ORIGINAL_LAYERS]
    # 4 stem + 4 projection convs + 5 per block: 16 blocks in ResNet-RS-50.
    assert conv_count(50) == 88
    assert len(set(counts)) == len(counts)


def small_manifest() -> dict[str, np.ndarray]:
    return zero_variables(architecture.original_variables(50, 1000))


def test_missing_variable_named():
    variables = small_manifest()
    del variables["batch_normalization_7/moving_variance"]
    with pytest.raises(CheckpointError, match="Missing checkpoint variable "
                                              "'batch_normalization_7/moving_variance'"):
        check_variables(variables)


def test_misshaped_variable_named():
    variables = small_manifest()
    variables["conv2d_6/kernel"] = np.zeros((3, 3, 64, 65), np.float32)
    with pytest.raises(CheckpointError, match=r"'conv2d_6/kernel' has shape \[3, 3, 64, 65\], "
                                              r"expected \[3, 3, 64, 64\]"):
        check_variables(variables)


def test_unused_variable_named():
    variables = small_manifest()
    variables["batch_normalization_999/gamma"] = np.zeros((4,), np.float32)
    with pytest.raises(CheckpointError, match="does not use: batch_normalization_999/gamma"):
        check_variables(variables)


def test_unknown_conv_count():
    variables = small_manifest()
    del variables["conv2d_87/kernel"]
    with pytest.raises(CheckpointError, match="has 87 conv kernels"):
        depth_from_variables(variables)


def test_wrong_depth_rejected():
    with pytest.raises(CheckpointError, match="88 conv kernels but ResNet-RS-101 has 173"):
        check_variables(small_manifest(), depth=101)


def test_invalid_depth_rejected():
    with pytest.raises(RsconvertError, match="Invalid ResNet-RS depth 51"):
        check_variables(small_manifest(), depth=51)


def test_invalid_precision_rejected():
    with pytest.raises(RsconvertError, match="Invalid precision 'float16'"):
        ReferenceNetwork(small_manifest(), precision="float16")


def test_invalid_input_shape(golden_variables):
    network = ReferenceNetwork(golden_variables["ema"])
    with pytest.raises(RsconvertError, match=r"Invalid input shape \[2, 32, 32\]"):
        network(np.zeros((2, 32, 32), np.float32))


def test_no_shared_code():
    source = (Path(__file__).resolve().parents[1] / "converter" / "reference_graph.py")
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    for module in ("converter.architecture", "converter.keras_model", "converter.name_map"):
        assert module not in imported
