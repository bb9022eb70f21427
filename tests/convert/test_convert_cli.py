"""``python -m ssmjax.convert``: ssmjax checkpoints from every format, HF exports, sharding, and atomic output."""

import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

import ssmjax
from ssmjax import checkpoint
from ssmjax.convert import __main__ as cli
from ssmjax.convert import torch_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
SENTENCEPIECE = os.path.join(FIXTURES, "data", "tiny_sp.model")


def _assert_same(a, b):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _leftovers(parent):
  return [name for name in os.listdir(parent) if ".tmp-" in name]


@pytest.mark.parametrize("source_format, case", [("megatron", "megatron/hybrid_tp2"), ("mamba_ssm", "mamba_ssm/mamba2"),
                                                 ("hf", "hf/nemotron_h"), ("auto", "megatron/gpt_legacy")])
def test_converts_each_format_to_an_ssmjax_checkpoint(source_format, case, tmp_path):
  source = os.path.join(FIXTURES, case)
  assert cli.main(["--from", source_format, source, str(tmp_path / "out")]) == 0
  config, params = checkpoint.load_model(str(tmp_path / "out"))
  expected_config, expected = ssmjax.load_pretrained(source)
  assert config == expected_config
  _assert_same(params, expected)
  with open(tmp_path / "out" / cli.INFO_FILE) as f:
    info = json.load(f)
  assert info["format"] == source_format if source_format != "auto" else info["format"] == "megatron"
  assert info["stored_dtypes"] == ["float32"] and info["padded_vocab_size"] == config.vocab_size
  assert ssmjax.convert.detect_format(str(tmp_path / "out")) == "ssmjax"


def test_megatron_tokenizer_is_copied_and_recorded(tmp_path):
  if not os.path.exists(SENTENCEPIECE):
    pytest.skip("the SentencePiece test fixture is not present")
  source = tmp_path / "release_dir"
  shutil.copytree(os.path.join(FIXTURES, "megatron", "hybrid"), source)
  shutil.copy(SENTENCEPIECE, source / "tokenizer.model")  # the name the fixture's args.tokenizer_model gives
  assert cli.main(["--from", "megatron", str(source), str(tmp_path / "out")]) == 0
  info = json.load(open(tmp_path / "out" / cli.INFO_FILE))
  assert info["tokenizer"]["file"] == "tokenizer.model" and info["tokenizer"]["kind"] == "sentencepiece"
  from ssmjax.tokenizers import load_tokenizer

  assert load_tokenizer(str(tmp_path / "out")).encode("hello") == load_tokenizer(SENTENCEPIECE).encode("hello")
  # The HF export carries the tokenizer along.
  assert cli.main(["--to", "hf", str(tmp_path / "out"), str(tmp_path / "hf")]) == 0
  assert os.path.exists(tmp_path / "hf" / "tokenizer.model")


def test_bfloat16_storage_restores_in_the_config_dtype_and_exports_as_stored(tmp_path):
  source = os.path.join(FIXTURES, "hf", "llama")
  assert cli.main(["--from", "hf", source, str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
  assert json.load(open(tmp_path / "out" / cli.INFO_FILE))["stored_dtypes"] == ["bfloat16"]
  config, params = checkpoint.load_model(str(tmp_path / "out"))
  _, original = ssmjax.load_pretrained(source)
  assert config.param_dtype == "float32"
  jax.tree_util.tree_map(lambda p, o: np.testing.assert_array_equal(
      np.asarray(p), np.asarray(o).astype(ml_dtypes.bfloat16).astype(np.float32)), params, original)
  assert cli.main(["--to", "hf", str(tmp_path / "out"), str(tmp_path / "hf")]) == 0
  assert json.load(open(tmp_path / "hf" / "config.json"))["dtype"] == "bfloat16"
  _, exported = ssmjax.load_pretrained(str(tmp_path / "hf"))
  _assert_same(exported, params)


def test_mesh_places_parameters_sharded_by_their_logical_axes(tmp_path):
  mesh = cli.parse_mesh("fsdp=2,tensor=2")
  source = os.path.join(FIXTURES, "megatron", "hybrid")
  config, params = ssmjax.load_pretrained(source, mesh=mesh)
  in_proj = params["layers_0"]["mixer"]["in_proj"]  # (embed, ssm_groups, per group) -> (fsdp, tensor, None)
  assert in_proj.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert params["embed"]["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  _, expected = ssmjax.load_pretrained(source)
  _assert_same(params, expected)
  assert cli.main(["--from", "megatron", source, str(tmp_path / "out"), "--mesh", "fsdp=2,tensor=2"]) == 0
  _, restored = ssmjax.load_pretrained(str(tmp_path / "out"), mesh=mesh)
  assert restored["layers_0"]["mixer"]["in_proj"].sharding.spec == in_proj.sharding.spec
  _assert_same(restored, expected)


def test_bad_mesh_is_named(capsys):
  with pytest.raises(ValueError, match="--mesh.*'model=2'"):
    cli.parse_mesh("model=2")


def test_existing_output_is_refused_and_left_alone(tmp_path, capsys):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  assert cli.main(["--from", "megatron", os.path.join(FIXTURES, "megatron", "gpt"), str(tmp_path / "out")]) == 1
  assert "already exists" in capsys.readouterr().err
  assert os.listdir(tmp_path / "out") == ["keep.txt"]


def test_bad_input_leaves_no_output(tmp_path, monkeypatch, capsys):
  real_load = torch_pickle.load

  def load_with_extra_tensor(path):
    data = real_load(path)
    data["model"]["decoder.layers.0.mixer.surprise"] = np.zeros(2, np.float32)
    return data

  monkeypatch.setattr(torch_pickle, "load", load_with_extra_tensor)
  assert cli.main(["--from", "megatron", os.path.join(FIXTURES, "megatron", "hybrid"), str(tmp_path / "out")]) == 1
  assert "decoder.layers.0.mixer.surprise" in capsys.readouterr().err
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failure_while_writing_leaves_no_output(tmp_path, monkeypatch, failure):
  real_save = checkpoint.save_model

  def save_then_fail(directory, config, params, **kwargs):
    real_save(directory, config, params, **kwargs)
    raise failure

  monkeypatch.setattr(checkpoint, "save_model", save_then_fail)
  with pytest.raises(type(failure)):
    cli.convert_to_ssmjax(os.path.join(FIXTURES, "megatron", "gpt"), str(tmp_path / "out"))
  assert os.listdir(tmp_path) == []


def test_unexportable_model_leaves_no_output(tmp_path, capsys):
  assert cli.main(["--to", "hf", os.path.join(FIXTURES, "megatron", "gpt"), str(tmp_path / "hf")]) == 1
  assert "norm 'layernorm_1p'" in capsys.readouterr().err
  assert os.listdir(tmp_path) == []


def test_missing_source_is_named(tmp_path, capsys):
  assert cli.main(["--from", "auto", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
  assert "nowhere" in capsys.readouterr().err and not _leftovers(tmp_path)
