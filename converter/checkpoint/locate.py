"""Resolve what the user typed (a directory, a prefix, an .index or .data file) to a prefix."""

from __future__ import annotations

import re
from pathlib import Path

from converter.errors import CheckpointError

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def resolve_prefix(path: str | Path) -> str:
    """Return the checkpoint prefix that `path` names.

    A directory must contain exactly one `.index` file; no `checkpoint` state file is
    needed (several official archives ship without one).
    """
    text = str(path)
    candidate = Path(text)
    if candidate.is_dir():
        indexes = sorted(candidate.glob("*.index"))
        if not indexes:
            raise CheckpointError(
                f"No checkpoint found in directory {candidate}: it has no .index file. "
                "Pass the directory that holds model.ckpt.index and its .data files.")
        if len(indexes) > 1:
            prefixes = ", ".join(str(p.with_suffix("")) for p in indexes)
            raise CheckpointError(
                f"Directory {candidate} contains {len(indexes)} checkpoints: {prefixes}. "
                "Pass one of these prefixes with --checkpoint.")
        return str(indexes[0].with_suffix(""))
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
