"""The numpy bundle reader against TensorFlow's CheckpointReader, bit for bit."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from converter.checkpoint import open_checkpoint, resolve_prefix
from converter.checkpoint.bundle import BundleReader, read_index, shard_path
from converter.errors import CheckpointError

CHECKPOINT_OPTIONS = {
    "float32": dict(storage="float32"),
    "bfloat16": dict(storage="bfloat16"),
    "mixed": dict(storage="mixed"),
    "sharded": dict(storage="float32", num_shards=3),
    "raw_only": dict(storage="bfloat16", ema=False, momentum=False),
}


def assert_same_as_tensorflow(prefix):
    import tensorflow as tf

    expected = tf.train.load_checkpoint(prefix)
    reader = BundleReader(prefix)
    assert reader.names() == sorted(expected.get_variable_to_shape_map())
    for name in reader.names():
        ours = reader.read(name)
        theirs = np.asarray(expected.get_tensor(name))
        assert ours.dtype == theirs.dtype, name
        assert ours.shape == theirs.shape, name
        assert ours.tobytes() == theirs.tobytes(), name


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_OPTIONS))
def test_reader_matches_tensorflow(kind, make_checkpoint):
    assert_same_as_tensorflow(make_checkpoint(**CHECKPOINT_OPTIONS[kind]))


def test_reader_matches_tensorflow_golden(golden_checkpoint):
    assert_same_as_tensorflow(golden_checkpoint)


def test_sharded_checkpoint_has_three_shards(make_checkpoint):
    prefix = make_checkpoint(**CHECKPOINT_OPTIONS["sharded"])
    num_shards, entries = read_index(Path(prefix + ".index"))
    assert num_shards == 3
    assert {entry.shard_id for entry in entries.values()} == {0, 1, 2}


def test_bfloat16_stored_dtype(make_checkpoint):
    reader = BundleReader(make_checkpoint(**CHECKPOINT_OPTIONS["mixed"]))
    assert reader.dtype("conv2d/kernel") == "bfloat16"
    assert reader.dtype("dense/kernel") == "float32"
    assert reader.dtype("global_step") == "int64"


def copy_checkpoint(prefix, target_dir):
    target_dir.mkdir()
    for path in Path(prefix).parent.glob(Path(prefix).name + ".*"):
        shutil.copy(path, target_dir / path.name)
    return str(target_dir / Path(prefix).name)


def test_flipped_byte_fails_crc(make_checkpoint, tmp_path):
    prefix = copy_checkpoint(make_checkpoint(storage="float32"), tmp_path / "copy")
    reader = BundleReader(prefix)
    entry = reader.entry("conv2d_5/kernel")
    data = shard_path(prefix, entry.shard_id, reader.num_shards)
    with open(data, "r+b") as f:
        f.seek(entry.offset + entry.size // 2)
        byte = f.read(1)
        f.seek(entry.offset + entry.size // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    reader = BundleReader(prefix)
    with pytest.raises(CheckpointError, match=r"conv2d_5/kernel in .*data-00000-of-00001 fails its CRC32C"):
        reader.read("conv2d_5/kernel")
    assert reader.read("conv2d_4/kernel").shape == (1, 1, 64, 256)


def test_truncated_shard_rejected(make_checkpoint, tmp_path):
    prefix = copy_checkpoint(make_checkpoint(storage="float32"), tmp_path / "copy")
    data = Path(prefix + ".data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001 is truncated: tensor "):
        BundleReader(prefix)


def test_missing_shard_named(make_checkpoint, tmp_path):
    prefix = copy_checkpoint(make_checkpoint(**CHECKPOINT_OPTIONS["sharded"]), tmp_path / "copy")
    Path(prefix + ".data-00001-of-00003").unlink()
    with pytest.raises(CheckpointError, match=r"Missing checkpoint data shard .*data-00001-of-00003"):
        BundleReader(prefix)


def test_index_without_data(make_checkpoint, tmp_path):
    prefix = copy_checkpoint(make_checkpoint(storage="float32"), tmp_path / "copy")
    Path(prefix + ".data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="Missing checkpoint data shard"):
        open_checkpoint(prefix)


def test_corrupt_index_rejected(tmp_path):
    (tmp_path / "model.ckpt.index").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index"):
        BundleReader(str(tmp_path / "model.ckpt"))


@pytest.mark.parametrize("suffix", ["", ".index", ".data-00000-of-00001"])
def test_resolve_prefix_forms(make_checkpoint, suffix):
    prefix = make_checkpoint(storage="float32")
    assert resolve_prefix(prefix + suffix) == prefix


def test_resolve_directory_without_state_file(make_checkpoint):
    prefix = make_checkpoint(storage="float32")
    directory = Path(prefix).parent
    assert not (directory / "checkpoint").exists()
    assert resolve_prefix(directory) == prefix


def test_directory_with_two_checkpoints(tmp_path):
    # Choosing the prefix looks only at the .index file names.
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / f"{name}.index").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"contains 2 checkpoints: .*a\.ckpt, .*b\.ckpt"):
        resolve_prefix(tmp_path)


@pytest.mark.parametrize("named", ["b.ckpt", "{folder}/b.ckpt", "/elsewhere/run1/b.ckpt",
                                   "gs://bucket/run1/b.ckpt"])
def test_state_file_picks_latest(named, tmp_path):
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / f"{name}.index").write_bytes(b"")
    (tmp_path / "checkpoint").write_text(
        f'model_checkpoint_path: "{named.format(folder=tmp_path)}"\n'
        'all_model_checkpoint_paths: "a.ckpt"\nall_model_checkpoint_paths: "b.ckpt"\n')
    assert resolve_prefix(tmp_path) == str(tmp_path / "b.ckpt")


def test_state_file_with_relative_folder(tmp_path, monkeypatch):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.ckpt", "b.ckpt"):
        (folder / f"{name}.index").write_bytes(b"")
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{folder / "b.ckpt"}"\n')
    monkeypatch.chdir(tmp_path)
    assert resolve_prefix("two") == str(Path("two") / "b.ckpt")


def test_state_file_naming_other_checkpoint(tmp_path):
    for name in ("a.ckpt", "b.ckpt"):
        (tmp_path / f"{name}.index").write_bytes(b"")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "c.ckpt"\n')
    with pytest.raises(CheckpointError, match=r"contains 2 checkpoints"):
        resolve_prefix(tmp_path)


def test_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no .index file"):
        resolve_prefix(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_prefix(tmp_path / "nowhere" / "model.ckpt")


def write_partitioned_checkpoint(directory):
    """Write an RS-50 checkpoint whose dense kernel shadow is saved as two slices."""
    import tensorflow as tf

    from converter.checkpoint.synthetic import checkpoint_tensors, random_variables

    tensors = checkpoint_tensors(random_variables(50), ema=True, momentum=False)
    dense = tensors.pop("dense/kernel/ExponentialMovingAverage")
    names = sorted(tensors)
    prefix = str(directory / "model.ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names + ["dense/kernel/ExponentialMovingAverage"] * 2,
        shape_and_slices=[""] * len(names) + ["2048 1000 0,1024:-", "2048 1000 1024,1024:-"],
        tensors=[tf.constant(tensors[n]) for n in names]
        + [tf.constant(dense[:1024]), tf.constant(dense[1024:])])
    return prefix, dense


def test_partitioned_variable_falls_back(tmp_path, caplog):
    import h5py

    from converter.convert import convert_checkpoint
    from converter.errors import UnsupportedBundleFeature

    prefix, dense = write_partitioned_checkpoint(tmp_path)
    with pytest.raises(UnsupportedBundleFeature, match="sliced .*dense/kernel/ExponentialMovingAverage"):
        BundleReader(prefix)
    report = convert_checkpoint(prefix, tmp_path / "out.h5")
    assert report.reader_backend == "tensorflow"
    assert "using TensorFlow's checkpoint reader instead" in caplog.text
    with h5py.File(tmp_path / "out.h5") as f:
        assert np.array_equal(f["predictions/predictions/kernel:0"][()], dense)


def test_bundle_backend_does_not_fall_back(tmp_path):
    from converter.errors import UnsupportedBundleFeature

    prefix, _ = write_partitioned_checkpoint(tmp_path)
    with pytest.raises(UnsupportedBundleFeature, match="sliced"):
        open_checkpoint(prefix, backend="bundle")


def test_wrong_prefix_lists_existing(make_checkpoint, tmp_path):
    prefix = make_checkpoint(storage="float32")
    directory = Path(prefix).parent
    with pytest.raises(CheckpointError, match=r"model\.ckpt-1\.index does not exist\. "
                                              r"Checkpoints in .*: .*model\.ckpt"):
        resolve_prefix(directory / "model.ckpt-1")


def test_missing_data_file_named(make_checkpoint):
    prefix = make_checkpoint(storage="float32")
    with pytest.raises(CheckpointError, match=r"data file .*data-00000-of-00002 does not exist"):
        resolve_prefix(prefix + ".data-00000-of-00002")


def mask_crc(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_compressed_index_block_named(make_checkpoint, tmp_path):
    import struct

    import google_crc32c

    from converter.checkpoint.bundle import FOOTER_SIZE, _block_entries, _read_block, _varint
    from converter.errors import UnsupportedBundleFeature

    prefix = copy_checkpoint(make_checkpoint(storage="float32"), tmp_path / "copy")
    index_path = Path(prefix + ".index")
    data = bytearray(index_path.read_bytes())
    footer = bytes(data[-FOOTER_SIZE:])
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    _, handle = _block_entries(_read_block(bytes(data), index_offset, index_size, index_path))[0]
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    # Mark the first data block as snappy-compressed, with a valid trailer CRC.
    data[offset + size] = 1
    crc = mask_crc(google_crc32c.value(bytes(data[offset:offset + size + 1])))
    data[offset + size + 1:offset + size + 5] = struct.pack("<I", crc)
    index_path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedBundleFeature, match="compressed index block"):
        BundleReader(prefix)
