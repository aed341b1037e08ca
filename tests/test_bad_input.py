"""Bad input through the real command line: one `Error:` line, a non-zero exit, no traceback,
and the output directory left exactly as it was.

Every case runs `converter.cli.main` in a child process. The checkpoints are depth-50
models stored as bfloat16 without Momentum slots, to keep them near 140 MB; one depth-101
checkpoint without EMA shadows supplies a weights file of another depth.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from converter.checkpoint.synthetic import save_tensors, write_original_checkpoint

CLI = [sys.executable, "-c", "from converter.cli import main; main()"]
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DATA_SHARD = "model.ckpt.data-00000-of-00001"
# Name and content of the file that every output directory contains before a command runs.
EXISTING_NAME = "existing.h5"
EXISTING_BYTES = b"weights written by an earlier run\n"

def patched_cli(setup: str) -> list[str]:
    """Return a command that runs `setup` (Python source) and then the CLI."""
    return [sys.executable, "-c", f"{setup}\nfrom converter.cli import main\nmain()"]


# Every HDF5 dataset write is delayed by 20 ms, so that the write phase of a depth-50
# conversion (346 datasets) lasts several seconds and a signal reliably lands in it.
SLOW_WRITER_CLI = patched_cli("""
import time
import h5py
create_dataset = h5py.Group.create_dataset
def slow_create_dataset(self, *args, **kwargs):
    time.sleep(0.02)
    return create_dataset(self, *args, **kwargs)
h5py.Group.create_dataset = slow_create_dataset
""")
# free_bytes reports 1 MiB to the check before writing, or 1 TiB so that a write starts and
# then runs out of space.
LITTLE_SPACE_CLI = patched_cli("""
import converter.output_files
converter.output_files.free_bytes = lambda directory: 2**20
""")
AMPLE_SPACE_CLI = patched_cli("""
import converter.output_files
converter.output_files.free_bytes = lambda directory: 2**40
""")
# The 20th HDF5 dataset write fails as h5py reports a full disk.
FULL_DISK_CLI = patched_cli("""
import errno
import h5py
create_dataset = h5py.Group.create_dataset
calls = []
def failing_create_dataset(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 20:
        raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed)")
    return create_dataset(self, *args, **kwargs)
h5py.Group.create_dataset = failing_create_dataset
""")


@pytest.fixture(scope="module")
def checkpoints(module_tmp_path) -> dict[str, Path]:
    """Write the good and bad checkpoints once; return their directories by role."""
    root = module_tmp_path / "checkpoints"
    root.mkdir()
    small = dict(depth=50, storage="bfloat16", momentum=False)
    write_original_checkpoint(root / "base", **small)
    write_original_checkpoint(root / "classes_1001", num_classes=1001, ema=False, **small)
    write_original_checkpoint(root / "no_ema", ema=False, **small)

    (root / "other").mkdir()
    save_tensors(root / "other" / "model.ckpt", {
        "encoder/dense/kernel": np.ones((8, 4), np.float32),
        "encoder/dense/bias": np.zeros(4, np.float32),
        "global_step": np.array(7, np.int64),
    })

    import tensorflow as tf

    tf.train.Checkpoint(v=tf.Variable(np.ones((3, 3), np.float32))).write(
        str(root / "tf2" / "ckpt"))

    base_data = root / "base" / DATA_SHARD
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "model.ckpt.index").write_bytes((root / "base" / "model.ckpt.index").read_bytes())
    with open(base_data, "rb") as source, open(truncated / DATA_SHARD, "wb") as target:
        target.write(source.read(base_data.stat().st_size // 2))

    index_only = root / "index_only"
    index_only.mkdir()
    (index_only / "model.ckpt.index").write_bytes((root / "base" / "model.ckpt.index").read_bytes())

    two = root / "two"
    two.mkdir()
    for name in ("first", "second"):
        (two / f"{name}.index").write_bytes((root / "base" / "model.ckpt.index").read_bytes())
        os.link(base_data, two / f"{name}.data-00000-of-00001")

    (root / "empty").mkdir()
    return {path.name: path for path in root.iterdir()}


@pytest.fixture
def output_dir(tmp_path) -> Path:
    """Return an output directory that already contains one earlier weights file."""
    directory = tmp_path / "out"
    directory.mkdir()
    (directory / EXISTING_NAME).write_bytes(EXISTING_BYTES)
    return directory


def snapshot(directory: Path) -> dict[str, str]:
    """Map every file name in `directory`, hidden ones included, to its SHA-256."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.iterdir())}


def run_cli(*args: str | Path, command: list[str] = CLI) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def assert_rejected(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Check the failure contract and that the error line contains each fragment."""
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Wrote" not in result.stdout
    return lines[0]


def convert(checkpoint: Path | str, output: Path | str, *options: str,
            command: list[str] = CLI) -> subprocess.CompletedProcess:
    return run_cli("ckpt-to-h5", "--checkpoint", checkpoint, "--output", output, *options,
                   command=command)


# --- checkpoints that cannot be read or are not ResNet-RS -----------------------------

def test_truncated_data_shard(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["truncated"], output_dir / "model.h5")
    assert_rejected(result, "truncated", str(checkpoints["truncated"] / DATA_SHARD))
    assert snapshot(output_dir) == before


def test_truncated_shard_tensorflow_reader(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["truncated"], output_dir / "model.h5", "--reader", "tensorflow")
    assert_rejected(result, str(checkpoints["truncated"] / "model.ckpt"))
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("reader", ["bundle", "tensorflow"])
def test_index_without_data(checkpoints, output_dir, reader):
    before = snapshot(output_dir)
    result = convert(checkpoints["index_only"], output_dir / "model.h5", "--reader", reader)
    assert_rejected(result, str(checkpoints["index_only"] / DATA_SHARD))
    assert snapshot(output_dir) == before


def test_directory_without_checkpoint(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["empty"], output_dir / "model.h5")
    line = assert_rejected(result, str(checkpoints["empty"]))
    assert "no .index file" in line
    assert snapshot(output_dir) == before


def test_two_checkpoints_in_directory(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["two"], output_dir / "model.h5")
    line = assert_rejected(result, str(checkpoints["two"]), "2 checkpoints")
    assert str(checkpoints["two"] / "first") in line
    assert str(checkpoints["two"] / "second") in line
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("reader", ["bundle", "tensorflow"])
def test_tf2_object_checkpoint(checkpoints, output_dir, reader):
    before = snapshot(output_dir)
    result = convert(checkpoints["tf2"], output_dir / "model.h5", "--reader", reader)
    assert_rejected(result, str(checkpoints["tf2"] / "ckpt"), "TF2 object-based")
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("reader", ["bundle", "tensorflow"])
def test_other_network(checkpoints, output_dir, reader):
    before = snapshot(output_dir)
    result = convert(checkpoints["other"], output_dir / "model.h5", "--reader", reader)
    line = assert_rejected(result, str(checkpoints["other"] / "model.ckpt"),
                           "not a tensorflow/tpu ResNet-RS checkpoint")
    assert "encoder/dense/kernel" in line
    assert snapshot(output_dir) == before


# --- a ResNet-RS checkpoint that does not match the options ---------------------------

def test_wrong_depth(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["base"], output_dir / "model.h5", "--depth", "101")
    assert_rejected(result, "Depth 101 (from --depth or --variant)", "ResNet-RS-50")
    assert snapshot(output_dir) == before


def test_unknown_depth(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["base"], output_dir / "model.h5", "--depth", "34")
    assert_rejected(result, "--depth", "34")
    assert snapshot(output_dir) == before


def test_class_count_mismatch(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["classes_1001"], output_dir / "model.h5",
                     "--weights", "raw", "--num-classes", "1000")
    assert_rejected(result, "1001 classes", "expected 1000", "background class")
    assert snapshot(output_dir) == before


def test_missing_ema(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["no_ema"], output_dir / "model.h5", "--weights", "ema")
    assert_rejected(result, str(checkpoints["no_ema"] / "model.ckpt"),
                    "/ExponentialMovingAverage", "--weights raw")
    assert snapshot(output_dir) == before


# --- output paths that cannot or must not be written ----------------------------------

def test_output_in_missing_directory(checkpoints, tmp_path):
    target = tmp_path / "missing" / "model.h5"
    result = convert(checkpoints["base"], target)
    assert_rejected(result, str(target.parent), "does not exist")
    assert not target.parent.exists()


def test_output_parent_is_file(checkpoints, output_dir):
    before = snapshot(output_dir)
    target = output_dir / EXISTING_NAME / "model.h5"
    result = convert(checkpoints["base"], target)
    assert_rejected(result, str(target.parent), "not a directory")
    assert snapshot(output_dir) == before


def test_output_in_chmod_readonly_directory(checkpoints, tmp_path):
    directory = tmp_path / "readonly"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("a directory with mode 0555 is still writable for this user (root)")
        result = convert(checkpoints["base"], directory / "model.h5")
        assert_rejected(result, str(directory), "not writable")
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o755)


def _sysfs_rejects_files() -> bool:
    try:
        handle, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(handle)
    os.unlink(name)
    return False


@pytest.mark.skipif(not Path("/sys").is_dir() or not _sysfs_rejects_files(),
                    reason="needs /sys mounted as sysfs, where no regular file can be created")
def test_output_on_readonly_mount(checkpoints):
    before = sorted(os.listdir("/sys"))
    result = convert(checkpoints["base"], "/sys/model.h5")
    line = assert_rejected(result, "/sys/model.h5")
    assert ".tmp" not in line
    assert sorted(os.listdir("/sys")) == before


def test_output_exists_without_overwrite(checkpoints, output_dir):
    before = snapshot(output_dir)
    target = output_dir / EXISTING_NAME
    result = convert(checkpoints["base"], target)
    assert_rejected(result, str(target), "already exists", "--overwrite")
    assert snapshot(output_dir) == before


# --- interruption ---------------------------------------------------------------------

def _wait_for_temp_file(directory: Path, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(path.name.endswith(".tmp") for path in directory.iterdir()):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, EXIT_INTERRUPTED),
                                            (signal.SIGTERM, 128 + signal.SIGTERM),
                                            (signal.SIGHUP, 128 + signal.SIGHUP)])
def test_interrupt_while_writing(signum, status, checkpoints, output_dir):
    before = snapshot(output_dir)
    args = ["ckpt-to-h5", "--checkpoint", str(checkpoints["base"]),
            "--output", str(output_dir / EXISTING_NAME), "--overwrite"]
    process = subprocess.Popen([*SLOW_WRITER_CLI, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        temp_seen = _wait_for_temp_file(output_dir, process, timeout=120)
        if temp_seen:
            process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert temp_seen, f"no temporary file appeared; stderr: {stderr}"
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr, stderr
    assert ("Interrupted." if signum == signal.SIGINT else "Stopped by SIG") in stderr
    assert "Wrote" not in stdout
    assert snapshot(output_dir) == before


# --- a full disk ------------------------------------------------------------------------

@pytest.fixture
def small_filesystem(tmp_path) -> Path:
    """Mount a 40 MiB tmpfs holding one earlier weights file; skip where mounting is denied.

    A depth-50 float32 weights file takes about 136 MiB, so a conversion into it runs out
    of space part-way.
    """
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs",
                                 str(mount_point)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("the mount command is not installed, so no small file system can be made")
    if result.returncode != 0:
        pytest.skip(f"mounting a 40 MiB tmpfs was denied ({result.stderr.strip()}); "
                    "it needs root")
    try:
        (mount_point / EXISTING_NAME).write_bytes(EXISTING_BYTES)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)


def test_too_little_space_fails_first(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["base"], output_dir / "model.h5", command=LITTLE_SPACE_CLI)
    assert_rejected(result, "Not enough free space", "needs about 140.4 MiB", "1.0 MiB is free")
    assert snapshot(output_dir) == before


def test_full_disk_while_writing(checkpoints, output_dir):
    before = snapshot(output_dir)
    result = convert(checkpoints["base"], output_dir / EXISTING_NAME, "--overwrite",
                     command=FULL_DISK_CLI)
    assert_rejected(result, f"Failed to write {output_dir / EXISTING_NAME}",
                    "No space left on device", "earlier output is unchanged")
    assert snapshot(output_dir) == before


def test_real_full_disk_while_writing(checkpoints, small_filesystem):
    before = snapshot(small_filesystem)
    result = convert(checkpoints["base"], small_filesystem / EXISTING_NAME, "--overwrite",
                     command=AMPLE_SPACE_CLI)
    assert_rejected(result, "No space left on device")
    assert "Exception ignored" not in result.stderr, result.stderr
    assert snapshot(small_filesystem) == before


@pytest.mark.parametrize("name", ["model.weights.h5", "model.keras", "saved"])
def test_real_full_disk_while_exporting(name, weights_files, small_filesystem):
    before = snapshot(small_filesystem)
    result = run_cli("export", "--weights-file", weights_files["rs50"], "--output",
                     small_filesystem / name, command=AMPLE_SPACE_CLI)
    assert_rejected(result, f"Failed to write {small_filesystem / name}",
                    "No space left on device")
    assert snapshot(small_filesystem) == before


# --- parity-check and eval ------------------------------------------------------------

WNID = "n01440764"  # ImageNet class index 0


def _jpeg_bytes(width: int = 96, height: int = 72) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_records(path: Path, examples: list[tuple[bytes, int]]) -> None:
    """Write imagenet_to_gcs-style records without checking the labels."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for image_bytes, label in examples:
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def weights_files(checkpoints, module_tmp_path) -> dict[str, Path]:
    """Convert the depth-50 and a depth-101 checkpoint, and write an HDF5 file of another tool."""
    import h5py

    from converter.convert import convert_checkpoint

    root = module_tmp_path / "weights"
    root.mkdir()
    convert_checkpoint(checkpoints["base"], root / "rs50.h5")
    deeper = write_original_checkpoint(root / "rs101", depth=101, storage="bfloat16", ema=False,
                                       momentum=False)
    convert_checkpoint(deeper, root / "rs101.h5", weights="raw")
    with h5py.File(root / "foreign.h5", "w") as foreign:
        foreign.attrs["layer_names"] = np.asarray([b"dense"])
        foreign.create_dataset("dense/kernel:0", data=np.ones((4, 2), np.float32))
    return {path.stem: path for path in root.glob("*.h5")}


@pytest.fixture(scope="module")
def eval_data(module_tmp_path) -> dict[str, Path]:
    """Write evaluation folders: good records, no images, a corrupt JPEG, a bad label."""
    root = module_tmp_path / "eval_data"
    root.mkdir()
    good = _jpeg_bytes()

    (root / "good").mkdir()
    _write_records(root / "good" / "validation-00000-of-00001", [(good, 1), (good, 2)])

    (root / "empty").mkdir()
    (root / "no_images").mkdir()
    (root / "no_images" / "README.txt").write_text("not an image\n")

    corrupt = root / "corrupt" / WNID
    corrupt.mkdir(parents=True)
    (corrupt / "good.JPEG").write_bytes(good)
    # A JPEG start-of-image marker followed by garbage: recognised as JPEG, fails to decode.
    (corrupt / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)

    (root / "bad_label").mkdir()
    _write_records(root / "bad_label" / "validation-00000-of-00001", [(good, 1), (good, 1001)])
    return {path.name: path for path in root.iterdir()}


def test_parity_foreign_weights_file(checkpoints, weights_files, output_dir):
    before = snapshot(output_dir)
    result = run_cli("parity-check", "--checkpoint", checkpoints["base"],
                     "--weights-file", weights_files["foreign"], "--random", "1",
                     "--json", output_dir / "parity.json")
    assert_rejected(result, str(weights_files["foreign"]), "not written by rsconvert")
    assert snapshot(output_dir) == before


def test_parity_weights_of_other_depth(checkpoints, weights_files, output_dir):
    before = snapshot(output_dir)
    result = run_cli("parity-check", "--checkpoint", checkpoints["base"],
                     "--weights-file", weights_files["rs101"], "--random", "1",
                     "--image-size", "32", "--json", output_dir / "parity.json")
    assert_rejected(result, str(weights_files["rs101"]), "ResNet-RS-101", "ResNet-RS-50")
    assert snapshot(output_dir) == before


def run_eval(data: Path, weights_file: Path, output_dir: Path, *options: str):
    return run_cli("eval", "--data", data, "--weights-file", weights_file,
                   "--image-size", "32", "--batch-size", "2",
                   "--results-file", output_dir / "result.json", *options)


def test_eval_foreign_weights_file(eval_data, weights_files, output_dir):
    before = snapshot(output_dir)
    result = run_eval(eval_data["good"], weights_files["foreign"], output_dir)
    assert_rejected(result, str(weights_files["foreign"]), "not written by rsconvert")
    assert snapshot(output_dir) == before


def test_eval_weights_of_other_depth(eval_data, weights_files, output_dir):
    before = snapshot(output_dir)
    result = run_eval(eval_data["good"], weights_files["rs101"], output_dir, "--depth", "50")
    assert_rejected(result, str(weights_files["rs101"]), "ResNet-RS-101", "depth 50")
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("folder", ["empty", "no_images"])
def test_eval_directory_without_images(eval_data, weights_files, output_dir, folder):
    before = snapshot(output_dir)
    result = run_eval(eval_data[folder], weights_files["rs50"], output_dir)
    assert_rejected(result, str(eval_data[folder]))
    assert snapshot(output_dir) == before


def test_eval_corrupt_jpeg(eval_data, weights_files, output_dir):
    before = snapshot(output_dir)
    result = run_eval(eval_data["corrupt"], weights_files["rs50"], output_dir)
    line = assert_rejected(result, str(eval_data["corrupt"] / WNID / "broken.JPEG"))
    assert "--skip-bad-images" in line
    assert snapshot(output_dir) == before


def test_eval_label_out_of_range(eval_data, weights_files, output_dir):
    before = snapshot(output_dir)
    result = run_eval(eval_data["bad_label"], weights_files["rs50"], output_dir)
    line = assert_rejected(result, "validation-00000-of-00001", "1001")
    assert "1..1000" in line
    assert snapshot(output_dir) == before
