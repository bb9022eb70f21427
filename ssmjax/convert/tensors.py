"""Reading safetensors checkpoints (one file, or shards with an index) one tensor at a time, tracking what was used."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class TensorReader:
  """``take(key)`` returns a float32/int NumPy array and marks the key used; `unused()` lists the rest.

  Reads ``model.safetensors``, or the shards named by ``model.safetensors.index.json``'s ``weight_map``.
  """

  def __init__(self, directory: str):
    self.directory = directory
    index_path = os.path.join(directory, INDEX_FILE)
    single_path = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: expected a 'weight_map' object mapping tensor names to shard files")
      self._files = {key: os.path.join(directory, shard) for key, shard in weight_map.items()}
    elif os.path.exists(single_path):
      with safe_open(single_path, framework="numpy") as f:
        self._files = {key: single_path for key in f.keys()}
    else:
      raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    missing_shards = sorted({path for path in self._files.values() if not os.path.exists(path)})
    if missing_shards:
      raise FileNotFoundError(f"checkpoint shards named in {INDEX_FILE} do not exist: {missing_shards}")
    self._used: set[str] = set()

  def keys(self) -> list[str]:
    return sorted(self._files)

  def __contains__(self, key: str) -> bool:
    return key in self._files

  def take(self, key: str) -> np.ndarray:
    if key not in self._files:
      raise KeyError(f"tensor {key!r} is missing from the checkpoint in {self.directory}")
    with safe_open(self._files[key], framework="numpy") as f:
      array = f.get_tensor(key)
    self._used.add(key)
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array

  def unused(self) -> list[str]:
    return sorted(set(self._files) - self._used)
