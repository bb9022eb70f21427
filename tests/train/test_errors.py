"""Bad input gets a clear error naming the setting, before anything is compiled or trained."""

import dataclasses
import subprocess

import gin
import pytest

from ssmjax import gin_utils
from ssmjax.sharding import MeshConfig
from ssmjax.train import train
from tiny_run import DATA, MODEL, train_config, train_py_command, subprocess_env


def test_missing_data_file(tmp_path):
  data = dataclasses.replace(DATA, source="text", paths=(str(tmp_path / "no_such_corpus.jsonl"),))
  with pytest.raises(FileNotFoundError, match="no_such_corpus.jsonl"):
    train(MODEL, data, train_config(), workdir=str(tmp_path / "run"))


def test_missing_tokenizer_file(tmp_path):
  data = dataclasses.replace(DATA, tokenizer=str(tmp_path / "no_such_tokenizer.model"))
  with pytest.raises(FileNotFoundError, match="no_such_tokenizer.model"):
    train(MODEL, data, train_config(), workdir=str(tmp_path / "run"))


def test_unknown_gin_binding():
  gin.clear_config()
  try:
    with pytest.raises(ValueError, match="not_a_setting"):
      gin_utils.parse(["runs/pretrain.gin"], ["ssmjax.TrainConfig.not_a_setting = 1"], finalize=False)
  finally:
    gin.clear_config()


def test_unknown_gin_binding_on_the_command_line(tmp_path):
  result = subprocess.run(train_py_command(tmp_path, "--gin.ssmjax.TrainConfig.not_a_setting=1"),
                          env=subprocess_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "not_a_setting" in result.stderr


@pytest.mark.parametrize("mesh, match", [
    (MeshConfig(data=3, fsdp=1, tensor=1), "has 3 devices but there are 8"),
    (MeshConfig(data=-1, fsdp=3, tensor=1), "multiple of 3 devices, but there are 8"),
])
def test_mesh_that_does_not_match_the_devices(mesh, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    train(MODEL, DATA, train_config(), mesh, workdir=str(tmp_path))


@pytest.mark.parametrize("data, config, mesh, match", [
    (dict(global_batch_size=6), {}, MeshConfig(data=4, fsdp=2), r"micro-batch .* divisible by the batch axes"),
    (dict(global_batch_size=8), dict(grad_accum_steps=3), MeshConfig(), "divisible by TrainConfig.grad_accum_steps"),
    (dict(global_batch_size=8), dict(grad_accum_steps=2), MeshConfig(data=8), r"micro-batch \(global_batch_size 8 / "
     r"grad_accum_steps 2 = 4 rows\)"),
    (dict(seq_len=33), {}, MeshConfig(data=4, tensor=2, rule_overrides=(("activation_length", "tensor"),)),
     r"DataConfig.seq_len \(33\) must be divisible"),
], ids=["batch-vs-mesh", "batch-vs-accumulation", "micro-batch-vs-mesh", "seq-len-vs-sequence-sharding"])
def test_batch_or_seq_len_not_divisible(data, config, mesh, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    train(MODEL, dataclasses.replace(DATA, **data), train_config(**config), mesh, workdir=str(tmp_path))


def test_parameter_the_mesh_cannot_split_is_named(tmp_path):
  # 4 Mamba-2 groups cannot be split over a tensor axis of 8 (Mamba-2 tensor parallelism needs ngroups % tensor == 0).
  with pytest.raises(ValueError, match=r"\['layers_0'\]\['mixer'\]\['A_log'\]|\['layers_0'\]\['mixer'\]\['conv1d'\]"
                     r"|\['layers_0'\]\['mixer'\]\['in_proj'\]"):
    train(MODEL, DATA, train_config(), MeshConfig(data=1, tensor=8), workdir=str(tmp_path))


def test_model_vocabulary_smaller_than_the_data(tmp_path):
  with pytest.raises(ValueError, match=r"vocab_size \(200\) is smaller than the data's vocabulary \(258"):
    train(MODEL.replace(vocab_size=200), DATA, train_config(), workdir=str(tmp_path))
