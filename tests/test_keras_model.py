"""The Keras 3 ResNet-RS: layer order, preprocessing, stages and dtype policy."""

import numpy as np
import pytest

from converter import architecture
from converter.errors import WeightsFileError
from converter.keras_model import MEAN_RGB, STDDEV_RGB, ResNetRS, load_weights_file, stage_outputs_model


def weighted_layers(model):
    return [(layer.name, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers if layer.weights]


def spec_layers(depth, include_top=True):
    return [(layer.name, [w.shape for w in layer.weights])
            for layer in architecture.layer_specs(depth, include_top=include_top)]


def test_layer_order_matches_description():
    model = ResNetRS(50, input_shape=(64, 64, 3))
    assert weighted_layers(model) == spec_layers(50)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [101, 152, 200, 270, 350, 420])
def test_layer_order_deep(depth):
    model = ResNetRS(depth, include_top=False, input_shape=(64, 64, 3))
    assert weighted_layers(model) == spec_layers(depth, include_top=False)


def test_parameter_count():
    # keras-applications' ResNetRS50 has 35,745,288 weights including BN statistics.
    assert ResNetRS(50).count_params() == 35_745_288


def test_bn_epsilon_and_momentum():
    model = ResNetRS(50, input_shape=(64, 64, 3))
    batch_norm = model.get_layer("BlockGroup3__block_1__batch_norm_2")
    assert batch_norm.epsilon == 1e-5
    assert batch_norm.momentum == 0.99


def test_builtin_preprocessing_matches_formula(golden_h5):
    plain = load_weights_file(golden_h5["ema"], input_shape=(64, 64, 3))
    with_preprocessing = load_weights_file(golden_h5["ema"], input_shape=(64, 64, 3),
                                           include_preprocessing=True)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    normalized = (pixels - 255 * np.array(MEAN_RGB, np.float32)) / (255 * np.array(STDDEV_RGB, np.float32))
    expected = plain.predict(normalized, verbose=0)
    actual = with_preprocessing.predict(pixels, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_stage_outputs(golden_h5):
    model = load_weights_file(golden_h5["ema"], input_shape=(160, 160, 3))
    stages = stage_outputs_model(model)
    outputs = stages.predict(np.zeros((1, 160, 160, 3), np.float32), verbose=0)
    assert outputs["stem"].shape == (1, 40, 40, 64)
    assert outputs["block_group1"].shape == (1, 40, 40, 256)
    assert outputs["block_group4"].shape == (1, 5, 5, 2048)
    assert outputs["pooled"].shape == (1, 2048)
    assert outputs["logits"].shape == (1, 1000)


def test_odd_input_size_runs(golden_h5):
    model = load_weights_file(golden_h5["ema"], input_shape=(97, 131, 3))
    logits = model.predict(np.zeros((1, 97, 131, 3), np.float32), verbose=0)
    assert np.isfinite(logits).all()


def test_bfloat16_policy_returns_float32_logits(golden_h5):
    model = load_weights_file(golden_h5["ema"], input_shape=(64, 64, 3), dtype="mixed_bfloat16")
    assert model.get_layer("stem_1_stem_conv_1").compute_dtype == "bfloat16"
    logits = model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert logits.dtype == np.float32


def test_softmax_head_sums_to_one(golden_h5):
    model = load_weights_file(golden_h5["ema"], input_shape=(64, 64, 3),
                              classifier_activation="softmax")
    probabilities = model.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_foreign_h5_rejected(tmp_path):
    import h5py

    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.asarray([b"dense"])
    with pytest.raises(WeightsFileError, match="was not written by rsconvert"):
        load_weights_file(path)


def test_notop_file_cannot_build_top(make_checkpoint, tmp_path):
    from converter.convert import convert_checkpoint

    output = tmp_path / "notop.h5"
    convert_checkpoint(make_checkpoint(storage="float32"), output, include_top=False)
    with pytest.raises(WeightsFileError, match="is a notop file"):
        load_weights_file(output, include_top=True)


def test_notop_model_skips_file_classifier(golden_h5):
    model = ResNetRS(50, include_top=False, pooling="avg", input_shape=(64, 64, 3),
                     weights=golden_h5["ema"])
    top = load_weights_file(golden_h5["ema"], input_shape=(64, 64, 3))
    kernel = model.get_layer("BlockGroup5__block_2__conv_3").get_weights()[0]
    assert np.array_equal(kernel, top.get_layer("BlockGroup5__block_2__conv_3").get_weights()[0])


def test_weights_argument_errors(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    cases = [(tmp_path / "absent.h5", "does not exist"),
             (tmp_path / "text.h5", "is not a readable HDF5 file"),
             (tmp_path, "is a directory"),
             ("imagenet", "downloads no weights; convert an official checkpoint")]
    for weights, message in cases:
        with pytest.raises(WeightsFileError, match=message):
            ResNetRS(50, input_shape=(32, 32, 3), weights=weights)
