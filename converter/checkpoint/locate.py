"""Resolve what the user typed (a directory, a prefix, an .index or .data file) to a prefix."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from converter.errors import CheckpointError

logger = logging.getLogger(__name__)

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
# TensorFlow's CheckpointState text file, written beside the checkpoints by tf.train.Saver.
STATE_FILE = "checkpoint"
_LATEST = re.compile(r'^model_checkpoint_path:\s*"(?P<path>[^"]+)"', re.MULTILINE)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar", ".zip")


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _directory_hint(directory: Path) -> str:
    """Point at archives to unpack or subfolders that hold a checkpoint, if there are any."""
    archives = sorted(p.name for p in directory.iterdir() if p.is_file() and _is_archive(p))
    if archives:
        return (f" It contains the archive {archives[0]}; unpack it first (e.g. tar -xf "
                f"{directory / archives[0]}) and pass the unpacked folder.")
    nested = sorted(str(p.parent) for p in directory.glob("*/*.index"))
    if nested:
        return f" A subfolder holds one: pass {nested[0]}."
    return " Pass the directory that holds model.ckpt.index and its .data files."


def _state_file_prefix(directory: Path, indexes: list[Path]) -> str | None:
    """Return the prefix that `directory/checkpoint` names as the latest, or None.

    None also when the named checkpoint is not one of `indexes`.
    """
    state = directory / STATE_FILE
    try:
        text = state.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = _LATEST.search(text)
    if match is None:
        return None
    # The match is by base name, because tf.train.Saver writes absolute paths, which no
    # longer hold once the folder is copied, moved or downloaded from gs://.
    name = match["path"].replace("\\", "/").rsplit("/", 1)[-1]
    for index in indexes:
        if index.with_suffix("").name == name:
            return str(index.with_suffix(""))
    return None


def resolve_prefix(path: str | Path) -> str:
    """Return the checkpoint prefix that `path` names.

    A directory must contain exactly one `.index` file, or several and a `checkpoint` state
    file that names one of them. The state file is not needed otherwise (several official
    archives ship without one).
    """
    text = str(Path(path).expanduser())
    candidate = Path(text)
    if candidate.is_dir():
        indexes = sorted(candidate.glob("*.index"))
        if not indexes:
            raise CheckpointError(
                f"No checkpoint found in directory {candidate}: it has no .index file."
                + _directory_hint(candidate))
        if len(indexes) > 1:
            latest = _state_file_prefix(candidate, indexes)
            if latest is not None:
                logger.info("%s contains %d checkpoints; using %s, which its `checkpoint` file "
                            "names as the latest.", candidate, len(indexes), latest)
                return latest
            prefixes = ", ".join(str(p.with_suffix("")) for p in indexes)
            raise CheckpointError(
                f"Directory {candidate} contains {len(indexes)} checkpoints: {prefixes}. "
                "Pass one of these prefixes with --checkpoint.")
        return str(indexes[0].with_suffix(""))
    if candidate.is_file() and _is_archive(candidate):
        raise CheckpointError(f"{path} is an archive; unpack it first (e.g. tar -xf {path}) "
                              "and pass the unpacked checkpoint folder.")
    if text.endswith(".index"):
        text = text[: -len(".index")]
    elif _DATA_SUFFIX.search(text):
        if not candidate.is_file():
            raise CheckpointError(f"Checkpoint data file {path} does not exist.")
        text = _DATA_SUFFIX.sub("", text)
    if not Path(text + ".index").is_file():
        parent = Path(text).parent
        if parent.is_dir():
            others = sorted(str(p.with_suffix("")) for p in parent.glob("*.index"))
            hint = (f" Checkpoints in {parent}: {', '.join(others)}." if others
                    else " Pass a checkpoint directory, a prefix such as .../model.ckpt, or its "
                         ".index file.")
            raise CheckpointError(f"No checkpoint at {path}: {text}.index does not exist.{hint}")
        raise CheckpointError(f"Checkpoint path {path} does not exist.")
    return text
