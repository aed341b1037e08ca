"""Exports: each one is reloaded and its logits compared with the source model's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from converter.errors import OutputError, RsconvertError, WeightsFileError
from converter.export import export_model, infer_export_format

IMAGE_SIZE = 64
NUM_CLASSES = 10
DEPTH = 50
# Maximum allowed max|export - source| / max|source logit|.
RELATIVE_TOLERANCE = 1e-5
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def weights_file(module_tmp_path):
    from converter.convert import convert_checkpoint
    from converter.demo import write_demo_checkpoint

    directory = module_tmp_path
    prefix = write_demo_checkpoint(directory / "checkpoint", depth=DEPTH, num_classes=NUM_CLASSES)
    output = directory / "resnet-rs-50.h5"
    convert_checkpoint(prefix, output, show_progress=False)
    return output


@pytest.fixture(scope="module")
def notop_weights_file(weights_file):
    from converter.convert import convert_checkpoint
    from converter.h5_weights import read_provenance

    output = weights_file.with_name("resnet-rs-50_notop.h5")
    convert_checkpoint(read_provenance(weights_file)["source_checkpoint"], output,
                       include_top=False, show_progress=False)
    return output


@pytest.fixture(scope="module")
def pixels():
    # Smooth images in 0..255, closer to photos than independent noise per pixel.
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, size=(3, 8, 8, 3))
    return np.repeat(np.repeat(coarse, IMAGE_SIZE // 8, axis=1), IMAGE_SIZE // 8,
                     axis=2).astype(np.float32)


@pytest.fixture(scope="module")
def source_logits(weights_file, pixels):
    from converter.keras_model import load_weights_file

    model = load_weights_file(weights_file, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                              classifier_activation=None)
    return np.asarray(model.predict(normalize(pixels), verbose=0))


def normalize(pixels: np.ndarray) -> np.ndarray:
    return ((pixels / np.float32(255.0) - MEAN_RGB) / STDDEV_RGB).astype(np.float32)


def assert_close(logits: np.ndarray, reference: np.ndarray) -> None:
    assert logits.shape == reference.shape
    scale = float(np.abs(reference).max())
    assert scale > 0
    assert float(np.abs(logits - reference).max()) <= RELATIVE_TOLERANCE * scale


def test_export_keras(weights_file, pixels, source_logits, tmp_path):
    import keras

    output = tmp_path / "model.keras"
    report = export_model(weights_file, output, "keras", image_size=IMAGE_SIZE)
    assert report.output == output
    assert report.depth == DEPTH
    assert report.num_classes == NUM_CLASSES
    reloaded = keras.saving.load_model(output)
    assert_close(np.asarray(reloaded.predict(normalize(pixels), verbose=0)), source_logits)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras"]


def test_export_weights_h5(weights_file, pixels, source_logits, tmp_path):
    from converter.keras_model import ResNetRS

    output = tmp_path / "model.weights.h5"
    export_model(weights_file, output, "weights.h5")
    model = ResNetRS(DEPTH, classes=NUM_CLASSES, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                     classifier_activation=None)
    model.load_weights(output)
    assert_close(np.asarray(model.predict(normalize(pixels), verbose=0)), source_logits)


@pytest.mark.slow
def test_export_savedmodel(weights_file, pixels, source_logits, tmp_path):
    import tensorflow as tf

    output = tmp_path / "served"
    export_model(weights_file, output, "savedmodel")
    # An earlier export is replaced with --overwrite.
    export_model(weights_file, output, "savedmodel", image_size=IMAGE_SIZE, overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["served"]
    loaded = tf.saved_model.load(str(output))
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32
    assert spec.shape.as_list() == [None, IMAGE_SIZE, IMAGE_SIZE, 3]
    outputs = serve(images=tf.constant(pixels))
    assert sorted(outputs) == ["logits", "probabilities"]
    logits = outputs["logits"].numpy()
    assert_close(logits, source_logits)
    probabilities = outputs["probabilities"].numpy()
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_export_savedmodel_notop_any_size(notop_weights_file, pixels, tmp_path):
    import tensorflow as tf

    from converter.keras_model import load_weights_file

    output = tmp_path / "features"
    report = export_model(notop_weights_file, output, "savedmodel")
    assert not report.include_top
    serve = tf.saved_model.load(str(output)).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, None, None, 3]
    small = pixels[:, :32, :32, :]
    features = serve(images=tf.constant(small))["features"].numpy()
    assert features.shape == (3, 1, 1, 2048)
    source = load_weights_file(notop_weights_file)
    assert_close(features, np.asarray(source.predict(normalize(small), verbose=0)))


def test_export_existing_output(weights_file, tmp_path):
    output = tmp_path / "model.keras"
    output.write_bytes(b"keep me")
    with pytest.raises(OutputError, match=r"already exists; pass --overwrite"):
        export_model(weights_file, output, "keras")
    assert output.read_bytes() == b"keep me"


def test_export_overwrite(weights_file, tmp_path):
    output = tmp_path / "model.weights.h5"
    output.write_bytes(b"old")
    export_model(weights_file, output, "weights.h5", overwrite=True)
    assert output.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.weights.h5"]


def test_export_wrong_suffix(weights_file, tmp_path):
    with pytest.raises(OutputError, match=r"must be a file ending in \.weights\.h5.*"
                                          r"model\.weights\.h5"):
        export_model(weights_file, tmp_path / "model.h5", "weights.h5")
    assert list(tmp_path.iterdir()) == []


def test_export_missing_folder(weights_file, tmp_path):
    with pytest.raises(OutputError, match=r"Output directory .*missing does not exist"):
        export_model(weights_file, tmp_path / "missing" / "model.keras", "keras")


def test_export_parent_is_file(weights_file, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"Output directory .*file is a file, not a directory"):
        export_model(weights_file, tmp_path / "file" / "model.keras", "keras")


def test_format_from_output_name():
    assert infer_export_format("out/model.keras") == "keras"
    assert infer_export_format("model.weights.h5") == "weights.h5"
    assert infer_export_format("rs152_savedmodel") == "savedmodel"


def test_export_savedmodel_with_file_suffix(weights_file, tmp_path):
    with pytest.raises(OutputError, match=r"savedmodel export is a folder, but .*model\.keras "
                                          r"has a file suffix"):
        export_model(weights_file, tmp_path / "model.keras", "savedmodel")
    assert list(tmp_path.iterdir()) == []


def test_export_format_inferred(weights_file, tmp_path):
    report = export_model(weights_file, tmp_path / "model.weights.h5", image_size=32)
    assert report.export_format == "weights.h5"
    assert (tmp_path / "model.weights.h5").is_file()


def test_export_unknown_format(weights_file, tmp_path):
    with pytest.raises(RsconvertError, match=r"Unknown export format 'onnx'"):
        export_model(weights_file, tmp_path / "model.onnx", "onnx")


def test_export_not_rsconvert_file(tmp_path):
    import h5py

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(WeightsFileError):
        export_model(foreign, tmp_path / "model.keras", "keras")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["foreign.h5"]


def test_export_failure_leaves_nothing(weights_file, tmp_path, monkeypatch):
    import keras

    def broken_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        export_model(weights_file, tmp_path / "model.keras", "keras")
    assert list(tmp_path.iterdir()) == []


def test_export_too_little_space(weights_file, tmp_path, monkeypatch):
    monkeypatch.setattr("converter.output_files.free_bytes", lambda directory: 2**20)
    with pytest.raises(OutputError, match=r"Not enough free space .* it needs about .* MiB and "
                                          r"1\.0 MiB is free"):
        export_model(weights_file, tmp_path / "model.keras")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("output", ["model.keras", "served"])
def test_export_disk_full(output, weights_file, tmp_path, monkeypatch):
    import errno

    import keras

    def fill_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", fill_disk)
    monkeypatch.setattr("converter.export.write_saved_model", fill_disk)
    if output == "served":
        (tmp_path / output).mkdir()
        (tmp_path / output / "saved_model.pb").write_bytes(b"earlier export")
    else:
        (tmp_path / output).write_bytes(b"old")
    before = sorted(path.name for path in tmp_path.rglob("*"))
    with pytest.raises(OutputError, match=r"Failed to write .*: No space left on device"):
        export_model(weights_file, tmp_path / output, overwrite=True)
    assert sorted(path.name for path in tmp_path.rglob("*")) == before


def test_export_overwrite_keeps_other_folders(weights_file, tmp_path, monkeypatch):
    folder = tmp_path / "user files"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"is a folder without saved_model\.pb, so it is not "
                                          r"a SavedModel and --overwrite would delete its files"):
        export_model(weights_file, folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"
    (folder / "saved_model.pb").write_bytes(b"an earlier export")
    with pytest.raises(OutputError, match=r"is a SavedModel folder that also contains notes\.txt, "
                                          r"which --overwrite would delete"):
        export_model(weights_file, folder, overwrite=True)
    (folder / "saved_model.pb").unlink()
    monkeypatch.chdir(folder)
    with pytest.raises(OutputError, match=r"Output \. is not a folder that an export can replace"):
        export_model(weights_file, ".", overwrite=True)
    assert sorted(path.name for path in folder.iterdir()) == ["notes.txt"]


def test_export_command_existing_output(weights_file, tmp_path):
    output = tmp_path / "model.keras"
    output.write_bytes(b"keep me")
    code = "import sys; from converter.cli import main; sys.argv[0] = 'rsconvert'; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "export", "--weights-file", str(weights_file), "--format",
         "keras", "--output", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"Error: Output {output} already exists; pass "
                                     "--overwrite to replace it.")
    assert output.read_bytes() == b"keep me"
