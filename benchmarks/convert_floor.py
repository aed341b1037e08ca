"""Floor for the conversion benchmark: copy the needed bytes and nothing else.

It parses the checkpoint's `.index` with `converter.checkpoint.bundle.read_index`, reads
the byte range of every `/ExponentialMovingAverage` tensor (the tensors a float32 EMA
conversion needs) with `os.pread`, and writes them out:

* `raw`: appended to a plain file, which is then extended to `--size` bytes (the size of
  the rsconvert output) so that both write the same amount;
* `h5py`: one float32 dataset per tensor in an HDF5 file, without Keras attributes.

There are no CRC checks, no name mapping and no dtype conversion, so the checkpoint must be
stored as float32.

Usage: python benchmarks/convert_floor.py CHECKPOINT_PREFIX OUTPUT [--mode raw|h5py] [--size N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EMA_SUFFIX = "/ExponentialMovingAverage"


def needed_entries(prefix: str):
    from converter.checkpoint.bundle import read_index

    num_shards, entries = read_index(Path(f"{prefix}.index"))
    needed = [entry for name, entry in sorted(entries.items()) if name.endswith(EMA_SUFFIX)]
    return num_shards, needed


def _read_exactly(fd: int, size: int, offset: int) -> bytes:
    parts, done = [], 0
    while done < size:
        part = os.pread(fd, size - done, offset + done)
        if not part:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def copy_needed_bytes(prefix: str, output: str, mode: str = "raw", size: int | None = None) -> int:
    """Copy the EMA tensors' bytes of `prefix` into `output`; return the bytes read."""
    from converter.checkpoint.bundle import shard_path

    num_shards, entries = needed_entries(prefix)
    fds = {shard: os.open(shard_path(prefix, shard, num_shards), os.O_RDONLY)
           for shard in range(num_shards)}
    bytes_read = 0
    try:
        if mode == "raw":
            with open(output, "wb") as out:
                for entry in entries:
                    out.write(_read_exactly(fds[entry.shard_id], entry.size, entry.offset))
                    bytes_read += entry.size
                if size is not None and out.tell() < size:
                    out.write(b"\0" * (size - out.tell()))
        elif mode == "h5py":
            import h5py
            import numpy as np

            with h5py.File(output, "w") as out:
                for entry in entries:
                    data = _read_exactly(fds[entry.shard_id], entry.size, entry.offset)
                    out.create_dataset(entry.name, data=np.frombuffer(data, "<f4").reshape(
                        entry.shape))
                    bytes_read += entry.size
        else:
            raise ValueError(f"mode must be raw or h5py, got {mode!r}")
    finally:
        for fd in fds.values():
            os.close(fd)
    return bytes_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint prefix, e.g. DIR/model.ckpt")
    parser.add_argument("output", help="output file")
    parser.add_argument("--mode", choices=("raw", "h5py"), default="raw",
                        help="plain file writes or one HDF5 dataset per tensor")
    parser.add_argument("--size", type=int, default=None,
                        help="in raw mode, extend the output with zeros to this many bytes")
    args = parser.parse_args()
    bytes_read = copy_needed_bytes(args.checkpoint, args.output, args.mode, args.size)
    print(f"read {bytes_read} bytes; wrote {args.output}")


if __name__ == "__main__":
    main()
