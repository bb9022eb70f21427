"""Checkpoint tensors, one at a time: a source interface that tracks what was used, safetensors read and write.

`TensorSource` is what every converter reads from: ``take(key)`` returns one NumPy array (in the stored dtype;
bfloat16 and float8 come back as ``ml_dtypes`` arrays) and marks the key used, so a converter can finish with
`TensorSource.unused` to reject unexpected tensors. `TensorReader` reads HF safetensors checkpoints (one file, or
shards listed by ``model.safetensors.index.json``) without the ``safetensors`` package's NumPy limits: the format is
an 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``
and the raw little-endian data, so each tensor is one ``seek`` + ``readinto``. `SafetensorsWriter` writes such files
tensor by tensor with constant memory, sharding at a byte limit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


class TensorSource:
  """Named tensors read on demand. Subclasses implement ``keys``, ``shape`` and ``_read``.

  ``take(key)`` reads one tensor and marks it used; ``recent()`` returns (and forgets) the keys taken since the last
  call, so an error about a converted parameter can name the checkpoint tensors it came from.
  """

  description = "checkpoint"

  def __init__(self):
    self._used: set[str] = set()
    self._recent: list[str] = []

  def keys(self) -> list[str]:
    raise NotImplementedError

  def shape(self, key: str) -> tuple[int, ...]:
    raise NotImplementedError

  def _read(self, key: str) -> np.ndarray:
    raise NotImplementedError

  def __contains__(self, key: str) -> bool:
    return key in set(self.keys())

  def take(self, key: str) -> np.ndarray:
    if key not in self:
      raise KeyError(f"tensor {key!r} is missing from the {self.description}")
    array = self._read(key)
    self._used.add(key)
    self._recent.append(key)
    return array

  def skip(self, key: str) -> None:
    """Mark ``key`` used without reading it (tensors a converter knows to ignore)."""
    self._used.add(key)

  def recent(self) -> list[str]:
    keys, self._recent = self._recent, []
    return keys

  def unused(self) -> list[str]:
    return sorted(set(self.keys()) - self._used)


def _read_header(path: str) -> tuple[dict, int]:
  """(header without ``__metadata__``, byte offset of the data section) of a safetensors file."""
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (length,) = struct.unpack("<Q", prefix)
    if length > 100 * 2**20:
      raise ValueError(f"{path}: not a safetensors file (header length {length} is implausible)")
    try:
      header = json.loads(f.read(length))
    except ValueError as e:
      raise ValueError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
  header.pop("__metadata__", None)
  return header, 8 + length


def read_array(path: str, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
  """``prod(shape)`` items of ``dtype`` at byte ``offset`` of ``path``, read straight into a new array."""
  array = np.empty(shape, dtype)
  with open(path, "rb") as f:
    f.seek(offset)
    view = memoryview(array.reshape(-1).view(np.uint8))
    if f.readinto(view) != array.nbytes:
      raise ValueError(f"{path}: file ends inside the tensor at byte {offset} (expected {array.nbytes} bytes)")
  return array


class TensorReader(TensorSource):
  """An HF safetensors checkpoint directory: ``model.safetensors`` or the shards named by the index."""

  def __init__(self, directory: str):
    super().__init__()
    self.directory = directory
    self.description = f"checkpoint in {directory}"
    index_path = os.path.join(directory, INDEX_FILE)
    single_path = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: expected a 'weight_map' object mapping tensor names to shard files")
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single_path):
      weight_map, files = None, [SINGLE_FILE]
    else:
      raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    missing_shards = [os.path.join(directory, f) for f in files if not os.path.exists(os.path.join(directory, f))]
    if missing_shards:
      raise FileNotFoundError(f"checkpoint shards named in {INDEX_FILE} do not exist: {missing_shards}")
    self._entries: dict[str, tuple[str, int, np.dtype, tuple[int, ...]]] = {}
    for name in files:
      path = os.path.join(directory, name)
      header, data_start = _read_header(path)
      for key, info in header.items():
        if weight_map is not None and weight_map.get(key) != name:
          continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
          raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']!r}")
        begin, _ = info["data_offsets"]
        self._entries[key] = (path, data_start + begin, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]))
    if weight_map is not None:
      absent = sorted(set(weight_map) - set(self._entries))
      if absent:
        raise ValueError(f"{INDEX_FILE} lists tensors that are not in their shard files: {absent}")

  def keys(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, key: str) -> bool:
    return key in self._entries

  def shape(self, key: str) -> tuple[int, ...]:
    return self._entries[key][3]

  def _read(self, key: str) -> np.ndarray:
    return read_array(*self._entries[key])


def dtype_name(dtype: np.dtype) -> str:
  """The safetensors name of a NumPy / ml_dtypes dtype."""
  dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
  if dtype not in _DTYPE_NAMES:
    raise ValueError(f"dtype {dtype} cannot be written to safetensors; supported: {sorted(_DTYPE_NAMES.values())}")
  return _DTYPE_NAMES[dtype]


class SafetensorsWriter:
  """Write tensors one at a time into ``model.safetensors`` (or shards of at most ``max_shard_bytes`` + an index).

  Each tensor's bytes go to a temporary data file as it arrives; closing a shard writes the header and copies the
  data after it in chunks, so memory stays at one tensor whatever the model size.
  """

  def __init__(self, directory: str, max_shard_bytes: int = 5 * 2**30, metadata: dict | None = None):
    self.directory = directory
    self.max_shard_bytes = max_shard_bytes
    self.metadata = {"format": "pt", **(metadata or {})}
    self._shards: list[tuple[str, dict]] = []  # (temporary data file, header) per shard
    self._header: dict | None = None
    self._data = None
    self._offset = 0

  def _open_shard(self):
    path = os.path.join(self.directory, f".shard{len(self._shards)}.data")
    self._data = open(path, "wb")
    self._header, self._offset = {}, 0
    self._shards.append((path, self._header))

  def add(self, name: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    if self._header is None or (self._offset and self._offset + array.nbytes > self.max_shard_bytes):
      if self._data is not None:
        self._data.close()
      self._open_shard()
    if any(name in header for _, header in self._shards):
      raise ValueError(f"tensor {name!r} written twice")
    self._header[name] = {"dtype": dtype_name(array.dtype), "shape": list(array.shape),
                          "data_offsets": [self._offset, self._offset + array.nbytes]}
    self._data.write(memoryview(array.reshape(-1).view(np.uint8)))
    self._offset += array.nbytes

  def close(self) -> list[str]:
    """Write the final files; returns their names."""
    if self._data is not None:
      self._data.close()
    count = len(self._shards)
    names = [SINGLE_FILE] if count <= 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    weight_map, total = {}, 0
    for (data_path, header), name in zip(self._shards, names):
      encoded = json.dumps({"__metadata__": self.metadata, **header}, separators=(",", ":")).encode()
      encoded += b" " * (-len(encoded) % 8)  # pad so the data section starts 8-byte aligned
      with open(os.path.join(self.directory, name), "wb") as out, open(data_path, "rb") as data:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        shutil.copyfileobj(data, out, 64 * 2**20)
      os.remove(data_path)
      weight_map.update({key: name for key in header})
      total += sum(info["data_offsets"][1] - info["data_offsets"][0] for info in header.values())
    if count > 1:
      with open(os.path.join(self.directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
      names.append(INDEX_FILE)
    return names


def write_safetensors(directory: str, tensors: Iterable[tuple[str, np.ndarray]], **kwargs) -> list[str]:
  """Stream ``(name, array)`` pairs into ``directory`` with `SafetensorsWriter`."""
  writer = SafetensorsWriter(directory, **kwargs)
  for name, array in tensors:
    writer.add(name, array)
  return writer.close()


def nbytes(shape: Iterable[int], dtype) -> int:
  return math.prod(shape) * np.dtype(dtype).itemsize
