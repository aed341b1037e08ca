"""Output files: early checks of the target path and atomic replacement."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from converter.errors import OutputError


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

    Returns the path with a leading ~ expanded, which a shell leaves alone in --output=~/x.
    """
    path = Path(output).expanduser()
    if path.is_dir():
        raise OutputError(f"Output path {path} is a directory; give a file name such as "
                          f"{path / 'model.h5'}.")
    if path.exists() and not overwrite:
        raise OutputError(f"Output file {path} already exists; pass --overwrite to replace it.")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"Output directory {parent} is a file, not a directory; choose "
                          "another output path.")
    if not parent.is_dir():
        raise OutputError(f"Output directory {parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Output directory {parent} is not writable.")
    return path


@contextlib.contextmanager
def atomic_output(target: str | Path, overwrite: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success.

    On any exception, KeyboardInterrupt included, the temporary file is removed and an
    existing `target` is left untouched. `suffix` ends the temporary name, for writers that
    choose the format from it.
    """
    target = check_output_path(target, overwrite)
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix,
                                             dir=target.parent if str(target.parent) else ".")
    except OSError as error:
        raise OutputError(f"Cannot write output {target}: {error.strerror or error}. Choose a "
                          "writable directory.") from None
    os.close(handle)
    temp = Path(temp_name)
    # mkstemp creates the file with mode 0600; give the output the usual permissions.
    os.chmod(temp, default_file_mode())
    try:
        yield temp
        if target.exists() and not overwrite:
            raise OutputError(f"Output file {target} appeared while writing; not replacing it.")
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
