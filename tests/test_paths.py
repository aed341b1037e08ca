"""How user-given paths are read: checkpoint hints, ~ expansion, weights files, defaults."""

from __future__ import annotations

import errno
import tarfile
from pathlib import Path

import h5py
import pytest

from converter.checkpoint.locate import resolve_prefix
from converter.errors import CheckpointError, OutputError, WeightsFileError
from converter.h5_weights import read_provenance
from converter.output_files import check_output_path, format_size, no_space_error
from converter.variants import CHECKPOINTS_ENV, checkpoints_root


def write_index(directory: Path, name: str = "model.ckpt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.index").write_bytes(b"index")
    return directory / name


def test_archive_given_as_checkpoint(tmp_path):
    archive = tmp_path / "resnet-rs-50-i160.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    with pytest.raises(CheckpointError, match=r"is an archive; unpack it first \(e\.g\. tar -xf"):
        resolve_prefix(archive)


def test_directory_with_archive(tmp_path):
    (tmp_path / "resnet-rs-50-i160.tar.xz").write_bytes(b"archive")
    with pytest.raises(CheckpointError, match=r"no \.index file\. It contains the archive "
                                              r"resnet-rs-50-i160\.tar\.xz; unpack it first"):
        resolve_prefix(tmp_path)


def test_directory_with_nested_checkpoint(tmp_path):
    write_index(tmp_path / "resnet-rs-50-i160")
    with pytest.raises(CheckpointError, match=r"A subfolder holds one: pass .*resnet-rs-50-i160"):
        resolve_prefix(tmp_path)


def test_empty_directory_hint(tmp_path):
    with pytest.raises(CheckpointError, match=r"Pass the directory that holds model\.ckpt\.index"):
        resolve_prefix(tmp_path)


def test_checkpoint_tilde_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    prefix = write_index(tmp_path / "ck")
    assert resolve_prefix("~/ck") == str(prefix)


def test_output_tilde_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_output_path("~/model.h5", overwrite=False) == tmp_path / "model.h5"


def test_output_link_resolved(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "w.h5"
    target.write_bytes(b"old")
    link = tmp_path / "w-link.h5"
    link.symlink_to(target)
    assert check_output_path(link, overwrite=True) == target
    with pytest.raises(OutputError, match=rf"Output file {target} already exists"):
        check_output_path(link, overwrite=False)


def test_overwrite_through_link_keeps_link(tmp_path):
    from converter.output_files import atomic_output

    target = tmp_path / "w.h5"
    target.write_bytes(b"old")
    link = tmp_path / "w-link.h5"
    link.symlink_to(target)
    with atomic_output(link, overwrite=True) as temp:
        temp.write_bytes(b"new")
    assert link.is_symlink()
    assert target.read_bytes() == b"new"


def test_dash_output_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=r"Output path '-' would create a file named '-'"):
        check_output_path("-", overwrite=False)
    assert list(tmp_path.iterdir()) == []


def test_weights_file_directory(tmp_path):
    with pytest.raises(WeightsFileError, match=r"is a directory; pass the \.h5 file"):
        read_provenance(tmp_path)


def test_weights_file_tilde_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.attrs["rsconvert_version"] = "0"
        for key, value in (("depth", 50), ("num_classes", 1000), ("include_top", 1)):
            f.attrs[key] = value
    assert read_provenance("~/w.h5")["depth"] == 50


def test_checkpoints_root_default(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert checkpoints_root().resolve() == tmp_path / "checkpoints"
    monkeypatch.setenv(CHECKPOINTS_ENV, str(tmp_path / "elsewhere"))
    assert checkpoints_root() == tmp_path / "elsewhere"


def test_disk_full_found_behind_close_error():
    # h5py raises a RuntimeError while closing a file whose write failed for lack of space.
    try:
        try:
            raise OSError(errno.ENOSPC, "file write failed")
        except OSError:
            raise RuntimeError("Disable slist on flush dest failure failed")
    except RuntimeError as error:
        found = no_space_error(error)
    assert found == errno.ENOSPC


def test_disk_full_found_in_message():
    # TensorFlow's ResourceExhaustedError carries the system message but no errno.
    error = RuntimeError("text_file_writer.cc: Write failed: No space left on device [Op:SaveV2]")
    assert no_space_error(error) == errno.ENOSPC


def test_other_write_errors_not_disk_full():
    assert no_space_error(OSError(errno.EIO, "I/O error")) is None
    assert no_space_error(RuntimeError("no cause")) is None


@pytest.mark.parametrize("num_bytes, text", [(100, "100 bytes"), (20_480, "20.0 KiB"),
                                             (152 * 2**20, "152.0 MiB"),
                                             (9 * 2**30, "9,216.0 MiB"),
                                             (15 * 2**30, "15.0 GiB")])
def test_format_size(num_bytes, text):
    assert format_size(num_bytes) == text
