"""load_pretrained against HF transformers' own PyTorch logits on random tiny checkpoints.

The fixtures in tests/fixtures/hf were written by scripts/make_hf_fixtures.py (torch + transformers, CPU, float32):
each holds a transformers checkpoint directory and the PyTorch logits for several sequence lengths (1, 7, 16, 29, 64;
the Mamba-2 chunk size is 8, so 7 and 29 are not chunk multiples).
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ssmjax

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
CASES = ["mamba", "mamba2", "mamba2_grouped", "nemotron_h", "llama"]


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case):
  directory = os.path.join(FIXTURES, case)
  config, params = ssmjax.load_pretrained(directory)
  reference = np.load(os.path.join(directory, "reference.npz"))
  apply = jax.jit(ssmjax.LanguageModel(config).apply)
  for length in reference["seq_lens"]:
    logits = np.asarray(apply({"params": params}, reference[f"input_ids_T{length}"]))
    expected = reference[f"logits_T{length}"]
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0, err_msg=f"{case}, seqlen {length}")


def test_converted_configs_describe_the_fixtures():
  assert ssmjax.load_pretrained(os.path.join(FIXTURES, "mamba2_grouped"))[0].mamba2.ngroups == 2
  assert ssmjax.load_pretrained(os.path.join(FIXTURES, "mamba2"))[0].tie_embeddings
  nemotron, _ = ssmjax.load_pretrained(os.path.join(FIXTURES, "nemotron_h"))
  assert nemotron.pattern == "M-M*-M" and nemotron.attention.rotary_fraction == 0.0
  llama, _ = ssmjax.load_pretrained(os.path.join(FIXTURES, "llama"))  # sharded safetensors with an index
  assert llama.pattern == "*-*-" and llama.attention.resolved_kv_heads() == 2


@pytest.fixture
def mamba2_copy(tmp_path):
  directory = tmp_path / "mamba2"
  shutil.copytree(os.path.join(FIXTURES, "mamba2"), directory)
  return directory


def _edit_tensors(directory, edit):
  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path)


def _edit_config(directory, edit):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    config = json.load(f)
  edit(config)
  with open(path, "w") as f:
    json.dump(config, f)


def test_missing_tensor_is_named(mamba2_copy):
  _edit_tensors(mamba2_copy, lambda t: t.pop("backbone.layers.1.mixer.dt_bias"))
  with pytest.raises(KeyError, match="backbone.layers.1.mixer.dt_bias"):
    ssmjax.load_pretrained(str(mamba2_copy))


def test_unexpected_tensor_is_named(mamba2_copy):
  _edit_tensors(mamba2_copy, lambda t: t.update({"backbone.layers.0.mixer.surprise": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match="backbone.layers.0.mixer.surprise"):
    ssmjax.load_pretrained(str(mamba2_copy))


def test_wrongly_shaped_tensor_is_named(mamba2_copy):
  _edit_tensors(mamba2_copy, lambda t: t.update({"backbone.layers.0.mixer.D": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match=r"layers_0/mixer/D has shape \(3,\).*backbone.layers.0.mixer.D"):
    ssmjax.load_pretrained(str(mamba2_copy))


def test_unknown_model_type_is_named(mamba2_copy):
  _edit_config(mamba2_copy, lambda c: c.update(model_type="rwkv"))
  with pytest.raises(ValueError, match="unsupported model_type 'rwkv'.*mamba2"):
    ssmjax.load_pretrained(str(mamba2_copy))


def test_missing_config_field_is_named(mamba2_copy):
  _edit_config(mamba2_copy, lambda c: c.pop("head_dim"))
  with pytest.raises(ValueError, match="head_dim"):
    ssmjax.load_pretrained(str(mamba2_copy))


def test_missing_files_are_named(tmp_path, mamba2_copy):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ssmjax.load_pretrained(str(tmp_path / "nowhere"))
  os.remove(mamba2_copy / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    ssmjax.load_pretrained(str(mamba2_copy))
  os.remove(mamba2_copy / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    ssmjax.load_pretrained(str(mamba2_copy))


def test_nemotron_h_moe_layers_are_rejected(tmp_path):
  directory = tmp_path / "nemotron_h"
  shutil.copytree(os.path.join(FIXTURES, "nemotron_h"), directory)
  _edit_config(directory, lambda c: c.update(layers_block_type=["linear_attention", "moe"]))
  with pytest.raises(ValueError, match="mixture-of-experts"):
    ssmjax.load_pretrained(str(directory))
