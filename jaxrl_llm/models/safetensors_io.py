"""Lazy, per-tensor reading of safetensors checkpoints (single file or sharded with an index).

A safetensors file is an 8-byte little-endian header length, a JSON header (dtype, shape and byte
range of every tensor) and the raw bytes. Each tensor is exposed as a read-only `np.memmap`, so a
caller slices just what it needs (one device's shard) and nothing else is read. bfloat16 tensors
use `ml_dtypes.bfloat16`, which numpy (and thus safetensors' numpy reader) lacks.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsFile:
    """The header of one `.safetensors` file, with memory-mapped access to its tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{self.path}: not a safetensors file ({size} bytes, shorter than its 8-byte header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise ValueError(f"{self.path}: header length {header_len} exceeds the file ({size} bytes): "
                                 "truncated or not a safetensors file")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{self.path}: unreadable safetensors header ({e})") from None
        self.data_start = 8 + header_len
        header.pop("__metadata__", None)
        self.entries: dict[str, dict] = header
        data_end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
        if self.data_start + data_end > size:
            raise ValueError(f"{self.path}: truncated: its header describes {self.data_start + data_end} bytes, "
                             f"the file has {size}")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def array(self, name: str) -> np.ndarray:
        """The tensor `name` as a read-only memory map (nothing is read until sliced)."""
        entry = self.entries[name]
        if entry["dtype"] not in _NUMPY_DTYPES:
            raise ValueError(f"tensor {name!r} in {self.path} has unsupported dtype {entry['dtype']}")
        dtype = np.dtype(_NUMPY_DTYPES[entry["dtype"]])
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if end - begin != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(f"tensor {name!r} in {self.path}: byte range {end - begin} does not match "
                             f"shape {shape} of {entry['dtype']}")
        if end == begin:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + begin, shape=shape)


class CheckpointReader:
    """All tensors of a Hugging Face checkpoint directory (`model.safetensors` or an index + shards)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{index_path}: not a safetensors index with a 'weight_map' ({e!r})") from None
            missing = sorted({f for f in weight_map.values() if not (self.directory / f).exists()})
            if missing:
                raise FileNotFoundError(f"{index_path} names shard files that do not exist: {missing}")
        else:
            files = sorted(self.directory.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {self.directory}")
            weight_map = {name: f.name for f in files for name in SafetensorsFile(f).entries}
        self._weight_map: dict[str, str] = weight_map
        self._files: dict[str, SafetensorsFile] = {}

    def names(self) -> list[str]:
        return sorted(self._weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self._weight_map

    def _file(self, name: str) -> SafetensorsFile:
        filename = self._weight_map[name]
        if filename not in self._files:
            self._files[filename] = SafetensorsFile(self.directory / filename)
        return self._files[filename]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def dtype(self, name: str) -> str:
        """The stored dtype tag (`"F32"`, `"BF16"`, `"I32"`, ...)."""
        return str(self._file(name).entries[name]["dtype"])

    def array(self, name: str) -> np.ndarray:
        return self._file(name).array(name)
