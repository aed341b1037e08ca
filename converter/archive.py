"""Unpack a checkpoint archive safely and find complete TensorFlow checkpoints in a folder.

`extract_checkpoint` unpacks a .tar.gz into a temporary directory beside the target and
renames the checkpoint directory into place, so the target is either a complete checkpoint
or absent. Absolute paths, `..` components, links and special files are rejected before
anything reaches the target.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable

from converter.errors import CheckpointError, OutputError
from converter.output_files import translate_disk_full

# Buffer size for copying members out of the archive and for reading the gzip stream to its end.
CHUNK_BYTES = 1 << 20

# Ends every UnsafeArchiveError message. The staging directory is removed on any error.
_REJECTED = "The archive was rejected and nothing from it was kept."

# A shard of TensorFlow checkpoint data: PREFIX.data-00000-of-00002.
_DATA_SHARD = re.compile(r"^(?P<prefix>.+)\.data-(?P<index>\d{5})-of-(?P<count>\d{5})$")


class UnsafeArchiveError(CheckpointError):
    """An archive member would land outside the destination, or is not a file or directory."""


def checkpoint_prefixes(directory: Path) -> list[Path]:
    """Return the prefixes in `directory` whose .index file and all .data shards exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = {path.name for path in directory.iterdir() if path.is_file()}
    shards: dict[str, set[tuple[int, int]]] = {}
    for name in names:
        match = _DATA_SHARD.match(name)
        if match:
            key = (int(match["index"]), int(match["count"]))
            shards.setdefault(match["prefix"], set()).add(key)
    prefixes = []
    for name in sorted(names):
        if not name.endswith(".index"):
            continue
        prefix = name[: -len(".index")]
        found = shards.get(prefix, set())
        counts = {count for _, count in found}
        if len(counts) == 1:
            count = counts.pop()
            if {index for index, _ in found} == set(range(count)):
                prefixes.append(directory / prefix)
    return prefixes


def is_checkpoint_dir(directory: Path) -> bool:
    """Return whether `directory` contains a complete checkpoint (.index and all .data shards)."""
    return bool(checkpoint_prefixes(directory))


def extract_checkpoint(archive: Path, target: Path, *, replace: bool = False) -> Path:
    """Unpack the checkpoint in the .tar.gz `archive` into the folder `target`.

    The archive may nest the checkpoint in any folder, but exactly one folder may contain
    checkpoint files, and files outside it are dropped. Members are unpacked into a
    temporary directory beside `target`, which is renamed into place at the end. Absolute
    paths, `..` components, links and special files raise UnsafeArchiveError before
    anything reaches `target`. An existing `target` is replaced only with `replace`.
    """
    archive = Path(archive)
    target = Path(target)
    if target.exists() and not replace:
        raise OutputError(f"{target} already exists. Remove it, or pass --force to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting",
                                    dir=target.parent))
    try:
        unpacked = staging / "archive"
        unpacked.mkdir()
        with translate_disk_full(target):
            _unpack_members(archive, unpacked)
        source = _find_checkpoint_dir(unpacked, archive)
        if target.exists():
            # Same file system, so both renames are atomic; the old copy goes with staging.
            target.replace(staging / "previous")
        source.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack_members(archive: Path, dest: Path) -> None:
    dest_resolved = dest.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                relative = _member_path(member, archive)
                if relative is None:
                    continue
                _apply_tarfile_filter(member, dest, archive)
                path = dest.joinpath(*relative.parts)
                if not path.resolve().is_relative_to(dest_resolved):
                    raise UnsafeArchiveError(
                        f"{archive} contains {member.name!r}, which would be written outside "
                        f"the destination. {_REJECTED}")
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
            # tarfile stops at the end-of-archive blocks. Reading the compressed stream to its
            # end makes gzip verify its CRC and length, which catches a corrupt download.
            while tar.fileobj.read(CHUNK_BYTES):
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(f"{archive} is not a readable .tar.gz archive ({detail}).") from None


def _member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath | None:
    """Return the member's path relative to the destination, or None for the top folder."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise UnsafeArchiveError(
            f"{archive} contains a member with an absolute path, {name!r}. {_REJECTED}")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive} contains a member whose path leaves the destination through '..', "
            f"{name!r}. {_REJECTED}")
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        raise UnsafeArchiveError(
            f"{archive} contains a {kind}, {name!r} -> {member.linkname!r}, but checkpoint "
            f"archives contain only files and folders. {_REJECTED}")
    if not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(
            f"{archive} contains {name!r}, which is neither a file nor a folder. {_REJECTED}")
    if not parts:
        return None
    return PurePosixPath(*parts)


def _apply_tarfile_filter(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    # The "data" filter (Python 3.12, backported to 3.8.17+, 3.9.17+, 3.10.12+, 3.11.4+)
    # checks again what _member_path checks. Older Pythons rely on _member_path alone.
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return
    try:
        data_filter(member, str(dest))
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(
            f"{archive} contains an unsafe member {member.name!r} ({error}). {_REJECTED}") \
            from None


def _find_checkpoint_dir(root: Path, archive: Path) -> Path:
    folders = [folder for folder in _walk_dirs(root) if is_checkpoint_dir(folder)]
    if not folders:
        raise CheckpointError(
            f"{archive} contains no complete TensorFlow checkpoint (an .index file with all "
            "its .data shards). Check that the URL points at a ResNet-RS checkpoint archive.")
    if len(folders) > 1:
        listed = ", ".join(str(folder.relative_to(root)) for folder in folders)
        raise CheckpointError(
            f"{archive} contains checkpoints in several folders ({listed}); expected one.")
    return folders[0]


def _walk_dirs(root: Path) -> Iterable[Path]:
    yield root
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            yield path
