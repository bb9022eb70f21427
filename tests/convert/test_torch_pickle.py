"""The torch-free ``torch.save`` reader: values, views and dtypes against torch's own, and what it refuses.

``tests/fixtures/torch_pickle/tensors.pt`` was written by ``scripts/make_convert_fixtures.py`` with torch, with the
expected values in ``expected.npz``; these tests need no torch. The last test compares with ``torch.load`` when torch
is installed.
"""

import io
import os
import pickle
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from ssmjax.convert import torch_pickle

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "torch_pickle")


@pytest.fixture(scope="module")
def loaded():
  return torch_pickle.load(os.path.join(FIXTURE, "tensors.pt"))


def test_tensors_read_back_exactly_with_their_dtypes_views_and_shapes(loaded):
  expected = np.load(os.path.join(FIXTURE, "expected.npz"))
  tensors = loaded["tensors"]
  dtypes = {"bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float16": np.float16,
            "float64": np.float64, "int64": np.int64, "int8": np.int8, "bool": np.bool_}
  assert set(tensors) == set(expected.files) - {"np_rng_state_key"}
  for name, lazy in tensors.items():
    assert isinstance(lazy, torch_pickle.LazyTensor)
    value = lazy.read()
    assert value.dtype == dtypes.get(name, np.float32), name
    assert value.shape == expected[name].shape, name
    np.testing.assert_array_equal(value.astype(expected[name].dtype), expected[name], err_msg=name)
    assert value.flags.c_contiguous


def test_views_of_one_storage_read_only_their_part(loaded):
  head, tail = loaded["tensors"]["shared_head"], loaded["tensors"]["shared_tail"]
  assert head.storage is tail.storage and tail.offset == 6
  np.testing.assert_array_equal(tail.read(), [6, 7, 8, 9])
  transposed = loaded["tensors"]["transposed"]
  assert transposed.stride == (1, 6)
  np.testing.assert_array_equal(transposed.read(), loaded["tensors"]["float32"].read().T)


def test_megatron_style_objects_are_read_as_inert_data(loaded):
  args = loaded["args"]
  assert isinstance(args, types.SimpleNamespace)
  assert (args.num_layers, args.name, args.ratios) == (3, "tiny", (0.5, 1.0))
  assert args.params_dtype == "torch.bfloat16" and isinstance(args.params_dtype, torch_pickle.TorchDtype)
  assert isinstance(loaded["extra_state"], torch_pickle.Opaque) and loaded["extra_state"].state is None
  assert loaded["blob"] == b"\x00\x01" and loaded["nothing"] is None
  assert loaded["nested"] == [1, 2.0, "three", (4, {"five": 5})]
  np.testing.assert_array_equal(loaded["parameter"].read(), [1.0, 1.0])
  rng = loaded["rng_state"][0]
  np.testing.assert_array_equal(rng["np_rng_state"][1], np.load(os.path.join(FIXTURE, "expected.npz"))[
      "np_rng_state_key"])
  assert isinstance(rng["torch_rng_state"], torch_pickle.LazyTensor)


def _torch_zip(path, payload: bytes, storages: dict[str, bytes] | None = None):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
    for key, data in (storages or {}).items():
      zf.writestr(f"archive/data/{key}", data)


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pt"
  _torch_zip(path, pickle.dumps({"model": _RunsCode(marker)}, protocol=2))
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r"evil.pt.*(posix|os)\.system"):
    torch_pickle.load(str(path))
  assert not marker.exists()


def test_other_globals_are_refused_by_name(tmp_path):
  path = tmp_path / "counter.pt"
  import collections

  _torch_zip(path, pickle.dumps(collections.Counter("ab"), protocol=2))
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="collections.Counter"):
    torch_pickle.load(str(path))


def test_a_zip_that_is_not_a_torch_archive_is_named(tmp_path):
  path = tmp_path / "other.zip"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("readme.txt", "hello")
  with pytest.raises(ValueError, match="other.zip.*not a torch.save archive"):
    torch_pickle.load(str(path))


def test_a_storage_shorter_than_its_tensor_is_named(tmp_path):
  source = os.path.join(FIXTURE, "tensors.pt")
  path = tmp_path / "truncated.pt"
  with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      dst.writestr(info, data[: len(data) // 2] if info.filename.endswith("/data/0") else data)
  tensors = torch_pickle.load(str(path))["tensors"]
  with pytest.raises(ValueError, match=r"truncated.pt.*(storage|runs past)"):
    tensors["float32"].read()


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.pt"):
    torch_pickle.load(str(tmp_path / "nowhere.pt"))


def test_legacy_files_without_torch_say_what_is_needed(tmp_path, monkeypatch):
  path = tmp_path / "legacy.pt"
  path.write_bytes(b"\x80\x02not a zip archive")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(ValueError, match=r"legacy.pt is not a zip-format torch.save file.*PyTorch"):
    torch_pickle.load(str(path))


def test_state_dict_source_reads_tensors_on_demand(loaded):
  source = torch_pickle.StateDictSource(loaded["tensors"], "test state dict")
  assert source.shape("transposed") == (6, 4)
  np.testing.assert_array_equal(source.take("int64"), np.arange(-3, 3))
  assert "int64" not in source.unused() and "bool" in source.unused()
  with pytest.raises(KeyError, match="'absent' is missing from the test state dict"):
    source.take("absent")


def test_matches_torch_load_on_random_tensors(tmp_path):
  torch = pytest.importorskip("torch")
  gen = torch.Generator().manual_seed(0)
  tensors = {f"t{i}": torch.randn(3, 5, 2, generator=gen).to(dtype).permute(2, 0, 1)[:, 1:, ::2]
             for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float16, torch.float64])}
  buffer = io.BytesIO()
  torch.save(tensors, buffer)
  path = tmp_path / "random.pt"
  path.write_bytes(buffer.getvalue())
  ours = torch_pickle.load(str(path))
  theirs = torch.load(str(path), weights_only=True)
  for name, tensor in theirs.items():
    np.testing.assert_array_equal(ours[name].read().astype(np.float64), tensor.double().numpy(), err_msg=name)
