"""ckpt-to-h5: golden logits, mapping for every depth, storage variants and refusals."""

import ast
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import (GOLDEN_DIR, LOGIT_TOLERANCE, REFERENCE_DIR, max_relative_error,
                      require_reference)
from converter import architecture
from converter.checkpoint.variables import EMA_SUFFIX, MOMENTUM_SUFFIX
from converter.convert import convert_checkpoint
from converter.errors import CheckpointError, MappingError, OutputError, RsconvertError
from converter.h5_weights import load_attribute, read_provenance
from converter.name_map import build_name_map

@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_golden_logits_keras3(weights, golden_h5):
    from converter.keras_model import load_weights_file

    inputs = np.load(GOLDEN_DIR / "inputs.npy")
    expected = np.load(GOLDEN_DIR / f"logits_{weights}.npy")
    model = load_weights_file(golden_h5[weights], input_shape=(160, 160, 3))
    logits = model.predict(inputs, verbose=0)
    assert max_relative_error(logits, expected) <= LOGIT_TOLERANCE


def test_golden_ema_and_raw_differ(golden_h5):
    with h5py.File(golden_h5["ema"]) as ema, h5py.File(golden_h5["raw"]) as raw:
        name = "predictions/predictions/kernel:0"
        assert not np.array_equal(ema[name][()], raw[name][()])


def test_golden_logits_tf_keras(golden_h5):
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.applications.ResNetRS50(
        weights=str(golden_h5["ema"]), include_preprocessing=False, input_shape=(160, 160, 3),
        classifier_activation=None)
    logits = model.predict(np.load(GOLDEN_DIR / "inputs.npy"), verbose=0)
    expected = np.load(GOLDEN_DIR / "logits_ema.npy")
    assert max_relative_error(logits, expected) <= LOGIT_TOLERANCE


def test_golden_keras3_positional_load(golden_h5):
    from converter.keras_model import ResNetRS

    model = ResNetRS(50, input_shape=(160, 160, 3), classifier_activation=None)
    model.load_weights(golden_h5["ema"])
    logits = model.predict(np.load(GOLDEN_DIR / "inputs.npy"), verbose=0)
    assert max_relative_error(logits, np.load(GOLDEN_DIR / "logits_ema.npy")) <= LOGIT_TOLERANCE


def test_provenance_attributes(golden_h5, golden_checkpoint):
    provenance = read_provenance(golden_h5["ema"])
    assert provenance["depth"] == 50
    assert provenance["num_classes"] == 1000
    assert provenance["weights"] == "ema"
    assert provenance["stored_dtype"] == "float32"
    assert provenance["include_top"] is True
    assert provenance["source_checkpoint"].endswith("model.ckpt")
    assert provenance["image_size"] is None


def test_image_size_recorded(make_checkpoint, tmp_path):
    prefix = make_checkpoint(storage="float32")
    convert_checkpoint(prefix, tmp_path / "sized.h5", image_size=224)
    assert read_provenance(tmp_path / "sized.h5")["image_size"] == 224
    with pytest.raises(RsconvertError, match="Invalid image size 0"):
        convert_checkpoint(prefix, tmp_path / "zero.h5", image_size=0)
    assert not (tmp_path / "zero.h5").exists()


def test_cli_image_size_names_output(make_checkpoint, tmp_path):
    result = run_cli("ckpt-to-h5", "--checkpoint", make_checkpoint(storage="float32"),
                     "--image-size", "192", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_provenance(tmp_path / "resnet-rs-50-i192.h5")["image_size"] == 192


def test_legacy_layout(golden_h5):
    with h5py.File(golden_h5["ema"]) as f:
        layer_names = load_attribute(f, "layer_names")
        assert layer_names == [layer.name for layer in architecture.layer_specs(50)]
        backend = f.attrs["backend"]
        assert (backend.decode() if isinstance(backend, bytes) else backend) == "tensorflow"
        assert load_attribute(f["stem_1_stem_batch_norm_1"], "weight_names") == [
            f"stem_1_stem_batch_norm_1/{w}:0" for w in architecture.BN_WEIGHTS]
        assert f["predictions/predictions/kernel:0"].dtype == np.float32


class ManifestReader:
    """A reader over a manifest's names and shapes, with EMA and Momentum names added."""

    def __init__(self, depth):
        path = require_reference(REFERENCE_DIR / "manifests") / f"resnet-rs-{depth}.tsv"
        self.prefix = str(path)
        self.shapes = {}
        for line in path.read_text().splitlines():
            name, shape = line.split("\t")
            shape = tuple(ast.literal_eval(shape))
            self.shapes[name] = shape
            self.shapes[name + EMA_SUFFIX] = shape
            if not name.rsplit("/", 1)[1].startswith("moving_"):
                self.shapes[name + MOMENTUM_SUFFIX] = shape
        self.shapes["global_step"] = ()

    def names(self):
        return sorted(self.shapes)

    def shape(self, name):
        return self.shapes[name]

    def dtype(self, name):
        return "float32"


@pytest.mark.parametrize("depth", architecture.DEPTHS)
def test_mapping_every_depth(depth):
    reader = ManifestReader(depth)
    name_map = build_name_map(reader)
    assert name_map.depth == depth
    assert name_map.num_classes == 1000
    tensors = [s.tensor for s in name_map.sources]
    assert len(tensors) == len(set(tensors))
    manifest = [n for n in reader.names()
                if "/" in n and not n.endswith((EMA_SUFFIX, MOMENTUM_SUFFIX))]
    assert sorted(tensors) == sorted(n + EMA_SUFFIX for n in manifest)
    for source in name_map.sources:
        assert reader.shape(source.tensor) == source.weight.shape


def test_mapping_kinds_line_up():
    name_map = build_name_map(ManifestReader(50), weights="raw")
    for source in name_map.sources:
        original_layer = source.tensor.split("/")[0]
        if source.layer.kind == "batch_norm":
            assert original_layer.startswith("batch_normalization"), source
        elif source.layer.kind == "conv":
            assert original_layer.startswith("conv2d"), source
        else:
            assert original_layer == "dense", source
        assert source.tensor.endswith("/" + source.weight.keras_name)


@pytest.mark.parametrize("storage", ["bfloat16", "mixed"])
def test_bfloat16_storage_widened(storage, make_checkpoint, tmp_path):
    import ml_dtypes
    from converter.checkpoint import open_checkpoint

    prefix = make_checkpoint(storage=storage)
    output = tmp_path / "out.h5"
    report = convert_checkpoint(prefix, output)
    assert "bfloat16" in report.stored_dtype
    with open_checkpoint(prefix) as reader:
        stored = reader.read("conv2d_7/kernel/ExponentialMovingAverage")
    assert stored.dtype == ml_dtypes.bfloat16
    with h5py.File(output) as f:
        written = f["BlockGroup2__block_0__conv_3/BlockGroup2__block_0__conv_3/kernel:0"][()]
    assert written.dtype == np.float32
    assert np.array_equal(written, stored.astype(np.float32))


def test_sharded_checkpoint_converts(make_checkpoint, tmp_path):
    sharded = convert_checkpoint(make_checkpoint(storage="float32", num_shards=3),
                                 tmp_path / "sharded.h5")
    single = convert_checkpoint(make_checkpoint(storage="float32"), tmp_path / "single.h5")
    assert sharded.num_tensors == single.num_tensors
    with h5py.File(sharded.output) as a, h5py.File(single.output) as b:
        for layer in load_attribute(a, "layer_names"):
            for weight in load_attribute(a[layer], "weight_names"):
                assert np.array_equal(a[layer][weight][()], b[layer][weight][()]), weight


def test_notop_file_loads_without_classifier(make_checkpoint, tmp_path):
    from converter.keras_model import load_weights_file

    output = tmp_path / "notop.h5"
    report = convert_checkpoint(make_checkpoint(storage="float32"), output, include_top=False)
    assert report.num_layers == len(architecture.layer_specs(50)) - 1
    model = load_weights_file(output, input_shape=(64, 64, 3))
    assert model.output_shape == (None, 2, 2, 2048)


def test_notop_loads_into_tf_keras(make_checkpoint, tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    output = tmp_path / "notop.h5"
    convert_checkpoint(make_checkpoint(storage="float32"), output, include_top=False)
    model = tf_keras.applications.ResNetRS50(weights=str(output), include_top=False,
                                             include_preprocessing=False, input_shape=(64, 64, 3))
    kernel = model.get_layer("stem_1_stem_conv_1" if any(
        layer.name == "stem_1_stem_conv_1" for layer in model.layers)
        else [l.name for l in model.layers if l.name.endswith("_stem_conv_1")][0]).get_weights()[0]
    with h5py.File(output) as f:
        assert np.array_equal(kernel, f["stem_1_stem_conv_1/stem_1_stem_conv_1/kernel:0"][()])


def test_missing_ema_suggests_raw(write_checkpoint, tmp_path):
    prefix = write_checkpoint(storage="float32", ema=False, momentum=False)
    with pytest.raises(CheckpointError, match=r"has no /ExponentialMovingAverage tensors. Use --weights raw"):
        convert_checkpoint(prefix, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    assert convert_checkpoint(prefix, tmp_path / "raw.h5", weights="raw").weights == "raw"


def test_one_missing_ema_named(write_checkpoint, tmp_path):
    prefix = write_checkpoint(storage="float32", momentum=False,
                              drop=("batch_normalization_7/moving_mean/ExponentialMovingAverage",))
    with pytest.raises(CheckpointError, match=r"variables \(1\): batch_normalization_7/moving_mean"):
        convert_checkpoint(prefix, tmp_path / "out.h5")


def test_unexpected_tensor_listed(write_checkpoint, tmp_path):
    extra = {"extra_head/kernel": np.zeros((3, 3), np.float32),
             "conv2d_999/kernel": np.zeros((1,), np.float32)}
    prefix = write_checkpoint(storage="float32", momentum=False, extra=extra)
    with pytest.raises(MappingError, match=r"unexpected \(2\): conv2d_999/kernel, extra_head/kernel"):
        convert_checkpoint(prefix, tmp_path / "out.h5")


def test_missing_and_mismatched_listed_together(write_checkpoint, tmp_path):
    extra = {"batch_normalization_3/gamma": np.ones((65,), np.float32)}
    prefix = write_checkpoint(storage="float32", momentum=False, extra=extra,
                              drop=("conv2d_9/bias",))
    with pytest.raises(MappingError) as error:
        convert_checkpoint(prefix, tmp_path / "out.h5", weights="raw")
    assert "missing (1): conv2d_9/bias" in str(error.value)
    assert "shape mismatch (1): batch_normalization_3/gamma (65,) vs Keras (64,)" in str(error.value)


def test_wrong_depth_names_both(make_checkpoint, tmp_path):
    with pytest.raises(MappingError, match=r"Depth 101 \(from --depth or --variant\) does not "
                                           r"match .* ResNet-RS-50"):
        convert_checkpoint(make_checkpoint(storage="float32"), tmp_path / "out.h5", depth=101)


def test_class_count_from_dense(write_checkpoint, tmp_path):
    prefix = write_checkpoint(storage="float32", momentum=False, num_classes=1001)
    report = convert_checkpoint(prefix, tmp_path / "out.h5")
    assert report.num_classes == 1001
    with pytest.raises(MappingError, match="has 1001 classes, expected 1000. The extra class is the background"):
        convert_checkpoint(prefix, tmp_path / "strict.h5", expected_classes=1000)


def test_tf2_object_checkpoint_rejected(tmp_path):
    import tensorflow as tf

    prefix = tf.train.Checkpoint(v=tf.Variable(np.zeros(3, np.float32))).write(
        str(tmp_path / "tf2" / "ckpt"))
    with pytest.raises(CheckpointError, match="not a tensorflow/tpu TF1 checkpoint"):
        convert_checkpoint(prefix, tmp_path / "out.h5")


def test_other_network_rejected(tmp_path):
    from converter.checkpoint.synthetic import save_tensors

    prefix = save_tensors(tmp_path / "other.ckpt", {
        "conv2d/kernel": np.zeros((3, 3, 3, 8), np.float32),
        "dense/kernel": np.zeros((8, 10), np.float32)})
    with pytest.raises(CheckpointError, match="not a tensorflow/tpu ResNet-RS checkpoint: it has 1"):
        convert_checkpoint(prefix, tmp_path / "out.h5")


def test_existing_output_kept(make_checkpoint, tmp_path):
    output = tmp_path / "out.h5"
    output.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        convert_checkpoint(make_checkpoint(storage="float32"), output)
    assert output.read_bytes() == b"keep me"
    convert_checkpoint(make_checkpoint(storage="float32"), output, overwrite=True)
    assert read_provenance(output)["depth"] == 50
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_failed_conversion_leaves_no_file(make_checkpoint, tmp_path):
    prefix = make_checkpoint(storage="float32", drop=("dense/bias/ExponentialMovingAverage",))
    with pytest.raises(CheckpointError):
        convert_checkpoint(prefix, tmp_path / "out.h5")
    assert list(tmp_path.iterdir()) == []


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from converter.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_converts_directory(make_checkpoint, tmp_path):
    from pathlib import Path

    directory = Path(make_checkpoint(storage="float32")).parent
    result = run_cli("ckpt-to-h5", "--checkpoint", str(directory), "--depth", "50",
                     "--no-include-top", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ResNet-RS-50" in result.stdout
    assert (tmp_path / "resnet-rs-50_notop.h5").is_file()
    assert "tensorflow" not in result.stderr.lower()


def test_cli_error_is_one_line(make_checkpoint, tmp_path):
    result = run_cli("ckpt-to-h5", "--checkpoint", make_checkpoint(storage="float32"),
                     "--depth", "152", "--output", str(tmp_path / "x.h5"))
    assert result.returncode == 2
    assert result.stderr.startswith(
        "Error: Depth 152 (from --depth or --variant) does not match")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_cli_inspect_variant(make_checkpoint, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    source = Path(make_checkpoint(storage="float32")).parent
    shutil.copytree(source, tmp_path / "resnet-rs-50-i160")
    monkeypatch.setenv("RSCONVERT_CHECKPOINTS", str(tmp_path))
    result = run_cli("inspect", "--variant", "resnet-rs-50-i160")
    assert result.returncode == 0, result.stderr
    assert "resnet-rs-50-i160" in result.stdout
    missing = run_cli("inspect")
    assert missing.returncode == 2
    assert "Missing --checkpoint PATH (or --variant NAME)" in missing.stderr


def test_cli_inspect_json(make_checkpoint):
    import json

    result = run_cli("inspect", "--checkpoint", make_checkpoint(storage="mixed"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["depth"] == 50
    assert info["has_ema"] is True
    assert info["has_momentum"] is True
    assert info["stored_dtypes"] == ["bfloat16", "float32", "int64"]


def test_output_gets_umask_permissions(make_checkpoint, tmp_path):
    import os
    import stat

    output = tmp_path / "out.h5"
    previous = os.umask(0o022)
    try:
        convert_checkpoint(make_checkpoint(storage="float32"), output)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(output.stat().st_mode) == 0o644


def test_demo_workdir_file_rejected(tmp_path):
    from converter.demo import run_demo

    workdir = tmp_path / "a-file"
    workdir.write_text("x")
    with pytest.raises(OutputError, match="is a file; pass a directory"):
        run_demo(workdir)
    assert workdir.read_text() == "x"


def test_conversion_imports_no_tensorflow(make_checkpoint, tmp_path):
    script = (
        "import sys\n"
        "from converter.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "heavy = sorted(n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print('heavy:', heavy)\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "ckpt-to-h5", "--checkpoint",
         make_checkpoint(storage="bfloat16"), "--output", str(tmp_path / "out.h5")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_non_utf8_checkpoint_path(tmp_path):
    import os
    from pathlib import Path

    from converter.checkpoint.synthetic import write_original_checkpoint

    # TensorFlow cannot write to such a path, so the folder is renamed afterwards.
    written = write_original_checkpoint(tmp_path / "plain", storage="bfloat16", momentum=False)
    folder = (tmp_path / "plain").rename(tmp_path / os.fsdecode(b"latin\xe9 dir"))
    output = tmp_path / "out.h5"
    convert_checkpoint(folder / Path(written).name, output)
    assert read_provenance(output)["source_checkpoint"] == str(folder / "model.ckpt")
