"""Reading PyTorch ``torch.save`` files without PyTorch: a restricted unpickler and lazily read tensors.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive ``<prefix>/data.pkl`` (the pickled object) plus one member
``<prefix>/data/<key>`` per storage with its raw little-endian bytes. The pickle refers to a storage by a *persistent
id* ``("storage", <Storage class>, key, location, numel)`` and rebuilds each tensor with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`` (``_v3`` adds a
dtype for newer dtypes).

`load` unpickles with an allow-list and no PyTorch: tensors become `LazyTensor` (dtype, shape, stride, where the bytes
are) and `LazyTensor.read` reads just that tensor's bytes from the archive, so a converter holds one tensor at a time.
Allowed globals: the tensor and storage rebuild functions above and ``_rebuild_parameter``; torch dtypes (kept as
strings) and ``torch.device``; ``collections.OrderedDict``; ``argparse.Namespace`` (Megatron's ``args``, as a
`types.SimpleNamespace`); ``io.BytesIO`` (Transformer Engine ``_extra_state``; contents dropped); NumPy arrays,
dtypes and scalars (Megatron's RNG state); what pickle protocol 2 needs for plain data (``_codecs.encode`` for bytes,
``set``, ``frozenset``, ``complex``, ``slice``, ``bytes()``); and inert stand-ins (`Opaque`) for ``megatron.*``
classes such as the enums in newer ``args``. Anything else is refused with `UnsafeCheckpointError` naming the
global, so a checkpoint cannot run code. Files from PyTorch < 1.6 (not zip archives) need ``torch.load``; they are read
with it (``weights_only=True``, whole file in memory) when PyTorch is installed.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import math
import os
import pickle
import struct
import types
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from ssmjax.convert.tensors import TensorSource

# torch dtype name -> NumPy dtype (little-endian, as torch writes storages on every platform we read).
TORCH_DTYPES = {
    "float64": np.dtype("<f8"), "double": np.dtype("<f8"), "float32": np.dtype("<f4"), "float": np.dtype("<f4"),
    "float16": np.dtype("<f2"), "half": np.dtype("<f2"), "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn), "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "int64": np.dtype("<i8"), "long": np.dtype("<i8"), "int32": np.dtype("<i4"), "int": np.dtype("<i4"),
    "int16": np.dtype("<i2"), "short": np.dtype("<i2"), "int8": np.dtype("i1"), "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4"), "uint64": np.dtype("<u8"), "bool": np.dtype("?"),
    "complex64": np.dtype("<c8"), "complex128": np.dtype("<c16"),
}
# Legacy typed storage classes (what ``torch.save`` names in a persistent id) -> element dtype.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The pickle refers to a global that the restricted unpickler does not allow."""


class TorchDtype(str):
  """A torch dtype named in a pickle (e.g. ``args.params_dtype``), kept as its name ``"torch.bfloat16"``."""


class Opaque:
  """An inert stand-in for an allowed foreign class (``megatron.*``): records its name and arguments, runs nothing."""

  args: tuple = ()
  kwargs: dict = {}
  state: Any = None

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"<{type(self).__qualname__}{self.args!r}>"


def _opaque_class(module: str, name: str) -> type:
  return type(f"{module}.{name}", (Opaque,), {"__module__": __name__})


class _DroppedBytesIO(Opaque):
  """``io.BytesIO`` (Transformer Engine's pickled ``_extra_state``): not needed, so its bytes are not kept."""

  def __setstate__(self, state):
    self.state = None


class _StorageType:
  def __init__(self, dtype_name: str):
    self.dtype_name = dtype_name


class _Storage:
  """Where one storage's bytes are: ``archive`` member ``data/<key>``, ``numel`` items of ``dtype``."""

  def __init__(self, archive: "_Archive", key: str, dtype: np.dtype, numel: int):
    self.archive, self.key, self.dtype, self.numel = archive, key, dtype, numel


class LazyTensor:
  """A tensor in a ``torch.save`` archive, not yet read: ``shape``, ``dtype`` and `read`."""

  def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...],
               dtype: np.dtype | None = None):
    self.storage, self.offset = storage, offset
    self.shape, self.stride = tuple(shape), tuple(stride)
    self.dtype = np.dtype(dtype) if dtype is not None else storage.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize

  def read(self) -> np.ndarray:
    """The tensor's values as a new C-contiguous NumPy array (only this tensor's bytes are read)."""
    itemsize = self.dtype.itemsize
    if math.prod(self.shape) == 0:
      return np.empty(self.shape, self.dtype)
    # Items this view spans in its storage (the last one it touches, plus one).
    extent = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
    if self.offset + extent > self.storage.numel * self.storage.dtype.itemsize // itemsize:
      raise ValueError(f"tensor view (offset {self.offset}, shape {self.shape}, stride {self.stride}) runs past its "
                       f"storage data/{self.storage.key} in {self.storage.archive.path}")
    flat = self.storage.archive.read(self.storage.key, self.offset * itemsize, extent * itemsize).view(self.dtype)
    strides = tuple(s * itemsize for s in self.stride)
    return np.array(np.lib.stride_tricks.as_strided(flat, self.shape, strides), order="C")

  def __repr__(self):
    return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *unused):
  return LazyTensor(storage, storage_offset, size, stride, TORCH_DTYPES[str(dtype).removeprefix("torch.")])


def _bytes(*args):
  """``bytes()`` as protocol 2 pickles an empty bytes object; never ``bytes(n)`` (which would allocate n bytes)."""
  if args and not isinstance(args[0], (bytes, bytearray, list)):
    raise pickle.UnpicklingError(f"refusing bytes({type(args[0]).__name__})")
  return bytes(*args)


def _rebuild_parameter(data, *unused):
  return data


_TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): types.SimpleNamespace,
    ("_io", "BytesIO"): _DroppedBytesIO,
    ("io", "BytesIO"): _DroppedBytesIO,
    ("torch", "device"): lambda *args: f"device{args!r}",
    # Pickle protocol 2 (torch's default) writes bytes as _codecs.encode(text, "latin1") and sets by their class.
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
    ("builtins", "bytes"): _bytes,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
}


class _Archive:
  """Byte ranges of the ``<prefix>/data/<key>`` members of a torch zip archive (stored members read in place)."""

  def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str):
    self.path, self.prefix = path, prefix
    self._infos = {info.filename: info for info in zf.infolist()}
    self._data_offsets: dict[str, int] = {}

  def _member(self, key: str) -> zipfile.ZipInfo:
    name = f"{self.prefix}data/{key}"
    if name not in self._infos:
      raise ValueError(f"{self.path}: storage member {name!r} referenced by the pickle is missing from the archive")
    return self._infos[name]

  def read(self, key: str, start: int, length: int) -> np.ndarray:
    info = self._member(key)
    if start + length > info.file_size:
      raise ValueError(f"{self.path}: storage data/{key} has {info.file_size} bytes, a tensor needs {start + length}")
    out = np.empty(length, np.uint8)
    if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses, but other zip tools might
      with zipfile.ZipFile(self.path) as zf, zf.open(info) as member:
        member.seek(start)
        member.readinto(memoryview(out))
      return out
    if key not in self._data_offsets:
      with open(self.path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
      self._data_offsets[key] = info.header_offset + 30 + name_length + extra_length
    with open(self.path, "rb") as f:
      f.seek(self._data_offsets[key] + start)
      if f.readinto(memoryview(out)) != length:
        raise ValueError(f"{self.path}: file ends inside storage data/{key}")
    return out


class _RestrictedUnpickler(pickle.Unpickler):
  def __init__(self, file, archive: _Archive):
    super().__init__(file)
    self.archive = archive
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    # Protocol 2 pickles use Python 2 names (``__builtin__``); map them as the standard unpickler does.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if (module, name) in _TORCH_GLOBALS:
      return _TORCH_GLOBALS[(module, name)]
    if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
      return _StorageType(STORAGE_DTYPES[name])
    if module == "torch" and name in TORCH_DTYPES:
      return TorchDtype(f"torch.{name}")
    if (module, name) in _NUMPY_GLOBALS:
      return super().find_class(module, name)
    if module == "numpy.dtypes" and name.endswith("DType"):  # NumPy >= 1.25 pickles dtypes by their class
      return super().find_class(module, name)
    if module == "megatron" or module.startswith("megatron."):
      return _opaque_class(module, name)
    raise UnsafeCheckpointError(
        f"{self.archive.path}: the pickle refers to {module}.{name}, which the torch-free reader does not allow (it "
        f"reads tensors, dicts, lists, argparse.Namespace, NumPy arrays and torch dtypes)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self.archive.path}: unexpected persistent id {pid!r}")
    _, storage_type, key, _, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"{self.archive.path}: storage {key!r} has an unknown storage type")
    if key not in self._storages:
      self._storages[key] = _Storage(self.archive, str(key), TORCH_DTYPES[storage_type.dtype_name], int(numel))
    return self._storages[key]


def _legacy_torch_load(path: str) -> Any:
  """PyTorch < 1.6 files (not zip archives): only ``torch.load`` reads them."""
  try:
    import torch
  except ImportError:
    raise ValueError(f"{path} is not a zip-format torch.save file (it may predate PyTorch 1.6); reading it needs "
                     f"PyTorch: pip install torch, or re-save it with a recent PyTorch") from None
  torch.serialization.add_safe_globals([argparse.Namespace])
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ValueError(f"{path} is not a zip-format torch.save file, and torch.load cannot read it either: "
                     f"{type(e).__name__}: {e}") from e

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
      return x.numpy()
    if isinstance(x, dict):
      return type(x)((k, to_numpy(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
      return type(x)(to_numpy(v) for v in x)
    if isinstance(x, argparse.Namespace):
      return types.SimpleNamespace(**vars(x))
    return x

  return to_numpy(obj)


def load(path: str) -> Any:
  """Unpickle a ``torch.save`` file with tensors as `LazyTensor` (NumPy arrays for legacy files read by torch)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist")
  if not zipfile.is_zipfile(path):
    return _legacy_torch_load(path)
  with zipfile.ZipFile(path) as zf:
    pickles = [name for name in zf.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"{path} is a zip file but not a torch.save archive (expected one <prefix>/data.pkl member, "
                       f"found {pickles})")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
      raise ValueError(f"{path}: big-endian torch.save archives are not supported")
    archive = _Archive(path, zf, prefix)
    data = zf.read(pickles[0])
  try:
    return _RestrictedUnpickler(io.BytesIO(data), archive).load()
  except UnsafeCheckpointError:
    raise
  except Exception as e:
    raise ValueError(f"{path}: cannot unpickle {pickles[0]}: {type(e).__name__}: {e}") from e


def read(value: Any) -> np.ndarray:
  """A `LazyTensor` (or an array from a legacy file) as a NumPy array."""
  return value.read() if isinstance(value, LazyTensor) else np.asarray(value)


def is_tensor(value: Any) -> bool:
  return isinstance(value, (LazyTensor, np.ndarray))


def flatten_state_dict(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts of tensors (legacy Megatron ``model``) -> ``{"a.b.c": tensor}``; non-tensor leaves are kept too."""
  if not isinstance(tree, dict):
    return {prefix.rstrip("."): tree}
  flat = {}
  for key, value in tree.items():
    flat.update(flatten_state_dict(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
  return flat


class StateDictSource(TensorSource):
  """A flat state dict from `load` (``{name: LazyTensor}``) as a `TensorSource`; tensors are read on ``take``."""

  def __init__(self, state_dict: dict[str, Any], description: str):
    super().__init__()
    self.description = description
    self.entries = dict(state_dict)

  def keys(self) -> list[str]:
    return sorted(self.entries)

  def __contains__(self, key: str) -> bool:
    return key in self.entries

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(np.shape(self.entries[key]) if not isinstance(self.entries[key], LazyTensor)
                 else self.entries[key].shape)

  def _read(self, key: str) -> np.ndarray:
    value = self.entries[key]
    if not is_tensor(value):
      raise ValueError(f"{self.description}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return read(value)
