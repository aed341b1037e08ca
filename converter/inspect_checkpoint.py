"""Describe a checkpoint: its tensors, the detected depth, class count and shadow copies."""

from __future__ import annotations

from pathlib import Path

from converter.checkpoint import detect_depth, num_classes, open_checkpoint, split_names
from converter.errors import CheckpointError


def inspect_checkpoint(path: str | Path, backend: str = "auto") -> dict:
    """Return a JSON-ready description of the checkpoint at `path`."""
    with open_checkpoint(path, backend=backend) as reader:
        names = reader.names()
        contents = split_names(names)
        try:
            depth = detect_depth(reader)
            error = None
        except CheckpointError as failure:
            depth, error = None, str(failure)
        tensors = [{"name": n, "dtype": reader.dtype(n), "shape": list(reader.shape(n)),
                    "bytes": reader.nbytes(n)} for n in names]
        return {
            "prefix": reader.prefix,
            "reader": reader.backend,
            "num_tensors": len(names),
            "total_bytes": sum(t["bytes"] for t in tensors),
            "depth": depth,
            "not_resnet_rs": error,
            "num_classes": num_classes(reader) if "dense/kernel" in names else None,
            "model_variables": len(contents.model),
            "has_ema": contents.has_ema,
            "has_momentum": contents.has_momentum,
            "stored_dtypes": sorted({t["dtype"] for t in tensors}),
            "tensors": tensors,
        }


def format_inspection(info: dict) -> str:
    lines = [f"{t['name']}\t{t['dtype']}\t{t['shape']}\t{t['bytes']}" for t in info["tensors"]]
    depth = info["depth"] if info["depth"] is not None else f"unknown ({info['not_resnet_rs']})"
    lines += [
        "",
        f"checkpoint:      {info['prefix']} (read with the {info['reader']} reader)",
        f"tensors:         {info['num_tensors']} ({info['total_bytes']:,} bytes)",
        f"depth:           {depth}",
        f"classes:         {info['num_classes']}",
        f"model variables: {info['model_variables']}",
        f"EMA shadows:     {'yes' if info['has_ema'] else 'no'}",
        f"Momentum slots:  {'yes' if info['has_momentum'] else 'no'}",
        f"stored dtypes:   {', '.join(info['stored_dtypes'])}",
    ]
    return "\n".join(lines)
