"""Output files: early checks of the target path and atomic replacement."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from converter.errors import DiskFullError, OutputError

# Errno values that only a write raises, when the file system or the user's quota is full.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Room left for metadata and file system rounding beyond the raw tensor bytes. At depth 50
# the metadata measured 0.45 MB in rsconvert's .h5 and 0.66 MB in a Keras .weights.h5.
SPACE_MARGIN_BYTES = 4 * 2**20


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Return the mode open() would give a new file: 0o666 less the process umask."""
    return 0o666 & ~_current_umask()


def default_directory_mode() -> int:
    """Return the mode mkdir() would give a new directory: 0o777 less the process umask."""
    return 0o777 & ~_current_umask()


def check_output_path(output: str | Path, overwrite: bool) -> Path:
    """Fail early, before any work, when `output` cannot or must not be written.

    Returns the path with a leading ~ expanded, which a shell leaves alone in --output=~/x,
    and a symbolic link to a file replaced by the file it points to.
    """
    if str(output) == "-":
        raise OutputError("Output path '-' would create a file named '-': rsconvert does not "
                          "write these files to standard output. Give a file name.")
    path = Path(output).expanduser()
    if path.is_symlink() and not path.is_dir():
        # Like cp, write the file the link points to; the link itself stays.
        path = path.resolve()
    if path.is_dir():
        raise OutputError(f"Output path {path} is a directory; give a file name such as "
                          f"{path / 'model.h5'}.")
    if path.exists() and not overwrite:
        raise OutputError(f"Output file {path} already exists; pass --overwrite to replace it.")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"Output directory {parent} is a file, not a directory; choose "
                          "another output path.")
    if not parent.is_dir():
        raise OutputError(f"Output directory {parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Output directory {parent} is not writable.")
    return path


def format_size(num_bytes: int) -> str:
    """Format a byte count in bytes, KiB, MiB, or GiB from 10 GiB up."""
    if num_bytes >= 10 * 2**30:
        return f"{num_bytes / 2**30:,.1f} GiB"
    if num_bytes >= 2**20:
        return f"{num_bytes / 2**20:,.1f} MiB"
    if num_bytes >= 2**10:
        return f"{num_bytes / 2**10:,.1f} KiB"
    return f"{num_bytes} bytes"


def free_bytes(directory: str | Path) -> int | None:
    """Return the bytes free to this user on `directory`'s file system, or None if unknown."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def check_free_space(directory: str | Path, needed_bytes: int, description: str) -> None:
    """Raise OutputError when `directory` has less than `needed_bytes` free for `description`.

    Free space that cannot be read is not an error. In that case the write itself reports
    a full disk.
    """
    free = free_bytes(directory)
    if free is not None and free < needed_bytes:
        raise OutputError(f"Not enough free space in {directory} for {description}: it needs about "
                          f"{format_size(needed_bytes)} and {format_size(free)} is free. Free "
                          "some space or choose another location.")


def no_space_error(error: BaseException) -> int | None:
    """Return the errno (ENOSPC or EDQUOT) of a full disk that caused `error`, else None.

    h5py reports a full disk as an OSError and then, while closing the file, as a
    RuntimeError raised during the first one, so the exception context is searched too.
    TensorFlow raises its own error types, which carry the system's message but no errno.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return current.errno
        if not isinstance(current, OSError):
            for code in NO_SPACE_ERRNOS:
                if os.strerror(code) in str(current):
                    return code
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def disk_full_error(target: Path, code: int) -> DiskFullError:
    """Return the error for a write of `target` that ran out of space (nothing replaced)."""
    return DiskFullError(f"Failed to write {target}: {os.strerror(code)} in {target.parent}. "
                         "The partial output was removed and any earlier output is unchanged. "
                         "Free some space or choose another location.")


@contextlib.contextmanager
def translate_disk_full(target: Path) -> Iterator[None]:
    """Turn a full-disk failure inside the block into one DiskFullError naming `target`."""
    try:
        yield
    except Exception as error:
        code = no_space_error(error)
        if code is None:
            raise
        raise disk_full_error(target, code) from None


@contextlib.contextmanager
def atomic_output(target: str | Path, overwrite: bool = False, suffix: str = ".tmp",
                  expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success.

    On any exception, KeyboardInterrupt included, the temporary file is removed and an
    existing `target` is left untouched, and a full disk becomes a DiskFullError. `suffix` ends
    the temporary name, for writers that choose the format from it. With `expected_bytes`,
    too little free space fails before anything is written.
    """
    target = check_output_path(target, overwrite)
    if expected_bytes is not None:
        check_free_space(target.parent, expected_bytes + SPACE_MARGIN_BYTES, str(target))
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix,
                                             dir=target.parent)
    except OSError as error:
        raise OutputError(f"Cannot write output {target}: {error.strerror or error}. Choose a "
                          "writable directory.") from None
    os.close(handle)
    temp = Path(temp_name)
    # mkstemp creates the file with mode 0600; give the output the usual permissions.
    os.chmod(temp, default_file_mode())
    try:
        with translate_disk_full(target):
            yield temp
        if target.exists() and not overwrite:
            raise OutputError(f"Output file {target} appeared while writing; not replacing it.")
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
