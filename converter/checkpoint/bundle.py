"""A numpy reader for TensorFlow's V2 checkpoint format (the "tensor bundle").

A checkpoint `PREFIX` is `PREFIX.index` plus data shards `PREFIX.data-NNNNN-of-NNNNN`.
The index is a LevelDB-style SSTable (tensorflow/core/lib/io/table_builder.cc): data blocks of
prefix-compressed key/value entries, an index block pointing at them, and a 48-byte footer.
The value under the empty key is a `BundleHeaderProto` (num_shards, endianness). Every other
key is a tensor name whose value is a `BundleEntryProto` (dtype, shape, shard_id, offset, size,
crc32c) that locates the tensor's raw bytes in its shard
(tensorflow/core/protobuf/tensor_bundle.proto). The protobufs are decoded by hand here so
that reading needs neither TensorFlow nor protobuf.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import google_crc32c
import numpy as np

from converter.errors import CheckpointError, UnsupportedBundleFeature

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked CRC32C
CRC_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType values this reader can return.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),   # DT_FLOAT
    2: np.dtype("<f8"),   # DT_DOUBLE
    3: np.dtype("<i4"),   # DT_INT32
    4: np.dtype("u1"),    # DT_UINT8
    5: np.dtype("<i2"),   # DT_INT16
    6: np.dtype("i1"),    # DT_INT8
    9: np.dtype("<i8"),   # DT_INT64
    10: np.dtype("?"),    # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}
DT_STRING = 7
DT_BFLOAT16 = 14


def _dtype_for(enum: int) -> np.dtype | None:
    if enum == DT_BFLOAT16:
        # Imported on first use: registering ml_dtypes' ufunc loops costs about a second,
        # and float32 checkpoints never need it.
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return DTYPES.get(enum)


def unmask_crc(masked: int) -> int:
    """Invert the CRC masking of tensorflow/core/lib/hash/crc32c.h."""
    rotated = (masked - CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint in checkpoint index")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Decode one protobuf message into (field number, wire type, value) triples."""
    fields = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = bytes(buf[pos:pos + length])
            pos += length
        elif wire == 5:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire} in checkpoint index")
        fields.append((number, wire, value))
    return fields


@dataclasses.dataclass(frozen=True)
class BundleEntry:
    """Location of one tensor's bytes (shard, byte offset, size) and its expected CRC32C."""

    name: str
    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool

    @property
    def dtype(self) -> np.dtype | None:
        return _dtype_for(self.dtype_enum)


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, _, value in _proto_fields(buf):
        if number == 2:  # TensorShapeProto.dim
            size = 0
            for dim_number, _, dim_value in _proto_fields(value):
                if dim_number == 1:
                    size = dim_value
            dims.append(size)
        elif number == 3 and value:
            raise UnsupportedBundleFeature("a tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> BundleEntry:
    values: dict[str, object] = {"dtype_enum": 0, "shape": (), "shard_id": 0, "offset": 0,
                                 "size": 0, "crc32c": None, "sliced": False}
    for number, _, value in _proto_fields(buf):
        if number == 1:
            values["dtype_enum"] = value
        elif number == 2:
            values["shape"] = _parse_shape(value)
        elif number == 3:
            values["shard_id"] = value
        elif number == 4:
            values["offset"] = value
        elif number == 5:
            values["size"] = value
        elif number == 6:
            values["crc32c"] = value
        elif number == 7:
            values["sliced"] = True
    return BundleEntry(name=name, **values)


def _read_block(index: bytes, offset: int, size: int, path: Path) -> bytes:
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(index):
        raise CheckpointError(f"{path} is truncated: a table block ends past the end of the file")
    block = index[offset:end]
    compression = index[end]
    if compression != 0:
        raise UnsupportedBundleFeature(
            f"a compressed index block (compression type {compression}) in {path}")
    stored_crc = struct.unpack_from("<I", index, end + 1)[0]
    actual = google_crc32c.value(index[offset:end + 1])
    if unmask_crc(stored_crc) != actual:
        raise CheckpointError(f"{path} is corrupt: a table block fails its CRC32C check")
    return block


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode the prefix-compressed key/value entries of one table block."""
    if len(block) < 4:
        raise CheckpointError("checkpoint index block is too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    entries = []
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_length]))
        pos += value_length
    return entries


def read_index(path: Path) -> tuple[int, dict[str, BundleEntry]]:
    """Parse a `.index` file into (num_shards, {tensor name: entry})."""
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{path} is too short to be a checkpoint index ({len(data)} "
                              "bytes); it is damaged or not an index file. Copy or download "
                              "the checkpoint again.")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (bad magic number)")
    _, pos = _varint(footer, 0)   # metaindex handle: offset, size (unused)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)

    num_shards = None
    entries: dict[str, BundleEntry] = {}
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, path)):
        block_offset, handle_pos = _varint(handle, 0)
        block_size, _ = _varint(handle, handle_pos)
        for key, value in _block_entries(_read_block(data, block_offset, block_size, path)):
            if key == b"":
                num_shards, big_endian = 1, False
                for number, _, field in _proto_fields(value):
                    if number == 1:
                        num_shards = field
                    elif number == 2:
                        big_endian = field == 1
                if big_endian:
                    raise UnsupportedBundleFeature(f"a big-endian checkpoint ({path})")
                continue
            if key.startswith(b"\x00"):
                # Slice entries of partitioned variables have binary keys starting with a
                # zero byte; their full tensor's entry lists the slices.
                continue
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise UnsupportedBundleFeature(f"a tensor name that is not UTF-8 ({key!r})") from None
            entries[name] = _parse_entry(name, value)
    if num_shards is None:
        raise CheckpointError(f"{path} has no bundle header; it is not a TF checkpoint index")
    return num_shards, entries


def shard_path(prefix: str | Path, shard_id: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}")


class BundleReader:
    """Read tensors of a V2 checkpoint with numpy, verifying each tensor's CRC32C."""

    backend = "bundle"

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        index_path = Path(f"{self.prefix}.index")
        self.num_shards, self._entries = read_index(index_path)
        self._shard_sizes: dict[int, int] = {}
        self._files: dict[int, int] = {}
        for shard_id in range(self.num_shards):
            path = shard_path(self.prefix, shard_id, self.num_shards)
            if not path.is_file():
                raise CheckpointError(
                    f"Missing checkpoint data shard {path}: the index lists {self.num_shards} "
                    "shard(s). Copy every .data-NNNNN-of-NNNNN file next to the .index file.")
            self._shard_sizes[shard_id] = path.stat().st_size
        for entry in self._entries.values():
            if entry.sliced:
                raise UnsupportedBundleFeature(f"a sliced (partitioned) variable: {entry.name}")
            if entry.shard_id >= self.num_shards:
                raise CheckpointError(
                    f"Tensor {entry.name} names data shard {entry.shard_id} but the index "
                    f"declares only {self.num_shards} shard(s)")
            shard_size = self._shard_sizes[entry.shard_id]
            if entry.offset + entry.size > shard_size:
                path = shard_path(self.prefix, entry.shard_id, self.num_shards)
                raise CheckpointError(
                    f"Checkpoint data shard {path} is truncated: tensor {entry.name} needs bytes "
                    f"{entry.offset}..{entry.offset + entry.size} but the file has {shard_size}. "
                    "Download the checkpoint again.")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> BundleEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"Tensor {name!r} is not in checkpoint {self.prefix}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entry(name).shape

    def dtype(self, name: str) -> str:
        entry = self.entry(name)
        if entry.dtype_enum == DT_STRING:
            return "string"
        if entry.dtype_enum == DT_BFLOAT16:
            return "bfloat16"
        if entry.dtype is None:
            return f"dtype_enum_{entry.dtype_enum}"
        return entry.dtype.name

    def nbytes(self, name: str) -> int:
        return self.entry(name).size

    def _fd(self, shard_id: int) -> int:
        if shard_id not in self._files:
            path = shard_path(self.prefix, shard_id, self.num_shards)
            self._files[shard_id] = os.open(path, os.O_RDONLY)
        return self._files[shard_id]

    def read(self, name: str) -> np.ndarray:
        """Return a tensor in its stored dtype, after checking its CRC32C."""
        entry = self.entry(name)
        if entry.dtype_enum == DT_STRING:
            raise UnsupportedBundleFeature(f"a string tensor ({name})")
        if entry.dtype is None:
            raise UnsupportedBundleFeature(f"tensor {name} of DataType enum {entry.dtype_enum}")
        expected = entry.dtype.itemsize * int(np.prod(entry.shape, dtype=np.int64))
        if expected != entry.size:
            raise CheckpointError(
                f"Tensor {name} has {entry.size} bytes in the index but shape {entry.shape} of "
                f"{entry.dtype.name} needs {expected}")
        fd = self._fd(entry.shard_id)
        data = os.pread(fd, entry.size, entry.offset)
        if len(data) < entry.size:
            # pread may return less than asked for very large reads; collect the rest.
            parts = [data]
            done = len(data)
            while done < entry.size:
                part = os.pread(fd, entry.size - done, entry.offset + done)
                if not part:
                    path = shard_path(self.prefix, entry.shard_id, self.num_shards)
                    raise CheckpointError(
                        f"Checkpoint data shard {path} ended while reading {name}")
                parts.append(part)
                done += len(part)
            data = b"".join(parts)
        if entry.crc32c is not None and google_crc32c.value(data) != unmask_crc(entry.crc32c):
            path = shard_path(self.prefix, entry.shard_id, self.num_shards)
            raise CheckpointError(
                f"Tensor {name} in {path} fails its CRC32C check: the shard is corrupt. "
                "Download the checkpoint again.")
        return np.frombuffer(data, dtype=entry.dtype).reshape(entry.shape)

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __enter__(self) -> "BundleReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
