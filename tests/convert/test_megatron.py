"""Megatron-LM checkpoints: logits against PyTorch references, tensor-parallel merging, the args mapping, bad input.

Fixtures (``scripts/make_convert_fixtures.py``, no torch needed here): ``hybrid`` / ``hybrid_tp2`` (pattern
``M-M*-M``, GQA attention without position encoding, GELU MLPs) against HF NemotronH on the same weights;
``mamba2`` against HF Mamba2; ``gpt`` / ``gpt_tp2`` / ``gpt_legacy`` (LayerNorm-1p, RoPE on half of each head,
squared ReLU) against an independent PyTorch forward pass of Megatron's GPT.
"""

import os
import shutil
import types

import jax
import numpy as np
import pytest

import ssmjax
from ssmjax.config import Mamba2Config
from ssmjax.convert import megatron, torch_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "megatron")


def _load(case):
  return ssmjax.load_pretrained(os.path.join(FIXTURES, case))


def _with_dt_limit(config, dt_limit):
  fields = {f: getattr(config.mamba2, f) for f in config.mamba2.__dataclass_fields__}
  return config.replace(mamba2=Mamba2Config(**{**fields, "dt_limit": dt_limit}))


def test_hybrid_matches_nemotron_h_and_megatron_semantics(logit_error):
  directory = os.path.join(FIXTURES, "hybrid")
  config, params = _load("hybrid")
  assert config.pattern == "M-M*-M" and config.mamba2.dt_limit == (0.0, float("inf"))  # Megatron: no dt clamp
  # As converted: Megatron's semantics (the reference NemotronH with its dt clamp switched off).
  assert logit_error(config, params, directory, key="logits_noclamp") < 1e-4
  # With NemotronH's clamp dt >= time_step_min (SPEC §10): the stock HF model.
  assert logit_error(_with_dt_limit(config, (1e-3, float("inf"))), params, directory) < 1e-4


@pytest.mark.parametrize("case", ["mamba2", "gpt"])
def test_logits_match_the_reference(case, logit_error):
  config, params = _load(case)
  assert logit_error(config, params, os.path.join(FIXTURES, case)) < 1e-4


@pytest.mark.parametrize("tp1, other", [("hybrid", "hybrid_tp2"), ("gpt", "gpt_tp2"), ("gpt", "gpt_legacy")])
def test_tensor_parallel_shards_and_legacy_names_load_to_the_same_parameters(tp1, other):
  config, params = _load(tp1)
  other_config, other_params = _load(other)
  assert other_config == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, other_params, params)


def test_a_plain_concatenation_of_in_proj_shards_would_be_wrong():
  # The fixture exercises the per-rank [z_r, x_r, B_r, C_r, dt_r] layout: concatenating the shards is not the matrix.
  full = torch_pickle.load(os.path.join(FIXTURES, "hybrid", "release", "mp_rank_00", "model_optim_rng.pt"))
  ranks = [torch_pickle.load(os.path.join(FIXTURES, "hybrid_tp2", "release", f"mp_rank_0{r}", "model_optim_rng.pt"))
           for r in range(2)]
  key = "decoder.layers.0.mixer.in_proj.weight"
  naive = np.concatenate([r["model"][key].read() for r in ranks])
  assert naive.shape == full["model"][key].shape and not np.array_equal(naive, full["model"][key].read())


def test_gpt_config_comes_from_args():
  config, _ = _load("gpt")
  assert config.pattern == "*-*-" and config.norm == "layernorm_1p" and config.init_depth == 2
  assert config.attention.rotary_fraction == 0.5 and config.attention.resolved_kv_heads() == 4  # GQA off: MHA
  assert config.mlp.activation == "squared_relu" and not config.mlp.bias and not config.tie_embeddings


def _args(**fields):
  base = dict(num_layers=4, hidden_size=64, num_attention_heads=4, padded_vocab_size=128, ffn_hidden_size=256,
              normalization="RMSNorm", position_embedding_type="none", add_bias_linear=False,
              untie_embeddings_and_output_weights=True)
  return types.SimpleNamespace(**{**base, **fields})


HYBRID_KEYS = ["decoder.layers.0.mixer.in_proj.weight", "decoder.layers.0.mixer.conv1d.bias"]


def test_paper_era_args_without_mamba_fields_use_the_mixer_defaults():
  config = megatron.model_config(_args(num_layers=56, hidden_size=4096, num_attention_heads=32,
                                       group_query_attention=True, num_query_groups=8, hybrid_attention_ratio=0.08,
                                       hybrid_mlp_ratio=0.5, ffn_hidden_size=16384, padded_vocab_size=256000),
                                 HYBRID_KEYS)
  assert config.pattern == "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
  m = config.mamba2
  assert (m.d_state, m.headdim, m.ngroups, m.resolved_nheads(4096), m.chunk_size) == (128, 64, 8, 128, 128)
  assert config.mlp.activation == "gelu" and config.attention.rotary_fraction == 0.0 and config.norm == "rmsnorm"


@pytest.mark.parametrize("fields, message", [
    (dict(position_embedding_type="learned_absolute"), "position_embedding_type 'learned_absolute'"),
    (dict(position_embedding_type="rope", rotary_interleaved=True), "rotary_interleaved"),
    (dict(apply_layernorm_1p=True), "apply_layernorm_1p"),
    (dict(normalization="Foo"), "normalization 'Foo'"),
    (dict(hidden_size=None), "hidden_size"),
    (dict(apply_residual_connection_post_layernorm=True), "apply_residual_connection_post_layernorm"),
    (dict(num_experts=8), "num_experts=8"),
])
def test_unsupported_or_missing_args_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    megatron.model_config(_args(**fields), [])


@pytest.fixture
def hybrid_copy(tmp_path):
  directory = tmp_path / "hybrid_tp2"
  shutil.copytree(os.path.join(FIXTURES, "hybrid_tp2"), directory)
  return directory


def test_missing_or_inconsistent_files_are_named(hybrid_copy):
  (hybrid_copy / "latest_checkpointed_iteration.txt").write_text("7")
  with pytest.raises(FileNotFoundError, match="iter_0000007"):
    ssmjax.load_pretrained(str(hybrid_copy))
  (hybrid_copy / "latest_checkpointed_iteration.txt").write_text("latest!")
  with pytest.raises(ValueError, match="latest_checkpointed_iteration.txt.*'latest!'"):
    ssmjax.load_pretrained(str(hybrid_copy))
  (hybrid_copy / "latest_checkpointed_iteration.txt").write_text("release")
  os.remove(hybrid_copy / "release" / "mp_rank_01" / "model_optim_rng.pt")
  with pytest.raises(FileNotFoundError, match="mp_rank_01 holds no model_optim_rng.pt"):
    ssmjax.load_pretrained(str(hybrid_copy))
  shutil.rmtree(hybrid_copy / "release" / "mp_rank_01")
  with pytest.raises(ValueError, match="tensor_model_parallel_size is 2 but 1 rank file"):
    ssmjax.load_pretrained(str(hybrid_copy))
  os.makedirs(hybrid_copy / "release" / "mp_rank_00_001")
  with pytest.raises(ValueError, match="pipeline-parallel"):
    ssmjax.load_pretrained(str(hybrid_copy))


def test_a_file_that_is_not_a_checkpoint_is_named(hybrid_copy):
  (hybrid_copy / "release" / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match=r"mp_rank_00/model_optim_rng.pt"):
    ssmjax.load_pretrained(str(hybrid_copy))


def _patched_load(monkeypatch, edit):
  """Edit the checkpoint dict of every rank as it is read (no torch needed to make bad checkpoints)."""
  real_load = torch_pickle.load

  def load(path):
    checkpoint = real_load(path)
    edit(checkpoint)
    return checkpoint

  monkeypatch.setattr(torch_pickle, "load", load)


def test_unexpected_tensor_is_named(monkeypatch):
  _patched_load(monkeypatch, lambda c: c["model"].update({"decoder.layers.1.mlp.router.weight": np.zeros((2, 32))}))
  with pytest.raises(ValueError, match="decoder.layers.1.mlp.router.weight"):
    _load("hybrid_tp2")


def test_missing_tensor_is_named(monkeypatch):
  _patched_load(monkeypatch, lambda c: c["model"].pop("decoder.layers.3.self_attention.linear_proj.weight"))
  with pytest.raises(KeyError, match="decoder.layers.3.self_attention.linear_proj.weight"):
    _load("hybrid_tp2")


def test_wrongly_shaped_tensor_is_named(monkeypatch):
  _patched_load(monkeypatch, lambda c: c["model"].update({"decoder.layers.2.mixer.D": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match=r"layers_2/mixer/D has shape \(6,\).*decoder.layers.2.mixer.D"):
    _load("hybrid_tp2")


def test_wrongly_shaped_qkv_is_named(monkeypatch):
  key = "decoder.layers.3.self_attention.linear_qkv.weight"
  _patched_load(monkeypatch, lambda c: c["model"].update({key: np.zeros((20, 32), np.float32)}))
  with pytest.raises(ValueError, match=f"{key}.*rows"):
    _load("hybrid")


def test_missing_args_entry_is_named(monkeypatch):
  _patched_load(monkeypatch, lambda c: c.pop("args"))
  with pytest.raises(ValueError, match="model_optim_rng.pt has no 'args'"):
    _load("gpt")


def test_old_checkpoint_versions_are_refused(monkeypatch):
  _patched_load(monkeypatch, lambda c: c.update(checkpoint_version=1.0))
  with pytest.raises(ValueError, match="checkpoint_version 1.0"):
    _load("gpt")
