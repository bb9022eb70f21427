"""state-spaces (mamba_ssm) checkpoints: logits against PyTorch / NumPy references, config mapping, bad input.

Fixtures (``scripts/make_convert_fixtures.py``): ``mamba1`` and ``mamba2`` compare with HF transformers' models on the
same weights; ``mamba2attn`` (Mamba-2 + MHA with partial RoPE, GQA, biases + GatedMLPs, untied) and
``mamba1_mlp_layernorm`` (LayerNorms with biases) with the script's float64 NumPy forward pass of mamba_ssm's modules;
``mamba2attn_conv`` (``mamba2attn-2.7b``'s attn_cfg in miniature: MHA with a width-4 conv over q|k|v, no biases, tied)
and ``mamba2attn_conv_gqa`` (the conv with GQA, biases, GatedMLPs) with attention layers in float64 PyTorch.
Sequence lengths 5 and 29 with Mamba-2 chunk size 8.
"""

import json
import os
import shutil

import numpy as np
import pytest

import ssmjax
from ssmjax.convert import mamba_ssm, torch_pickle
from ssmjax.convert.tensors import write_safetensors

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mamba_ssm")
CASES = ["mamba1", "mamba2", "mamba2attn", "mamba1_mlp_layernorm", "mamba2attn_conv", "mamba2attn_conv_gqa"]
# state-spaces/mamba2attn-2.7b's config.json (SPEC §6.3).
MAMBA2ATTN_2P7B = {"d_model": 2560, "d_intermediate": 0, "n_layer": 64, "vocab_size": 50277,
                   "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [9, 18, 27, 36, 45, 56],
                   "attn_cfg": {"causal": True, "d_conv": 4, "head_dim": 128, "num_heads": 30, "out_proj_bias": False,
                                "qkv_proj_bias": False, "rotary_emb_dim": 64},
                   "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 16,
                   "tie_embeddings": True}


@pytest.mark.parametrize("case", CASES)
def test_logits_match_the_reference(case, logit_error):
  directory = os.path.join(FIXTURES, case)
  assert ssmjax.convert.detect_format(directory) == "mamba_ssm"
  config, params = ssmjax.load_pretrained(directory)
  assert logit_error(config, params, directory) < 1e-4


def test_configs_map_the_state_spaces_fields():
  mamba1 = mamba_ssm.open_mamba_ssm(os.path.join(FIXTURES, "mamba1"))
  assert (mamba1.config.vocab_size, mamba1.info["vocab_size"]) == (64, 50)  # padded to a multiple of 16
  assert mamba1.config.tie_embeddings and mamba1.config.mamba_version == 1 and mamba1.config.pattern == "MM"
  hybrid = mamba_ssm.open_mamba_ssm(os.path.join(FIXTURES, "mamba2attn")).config
  # Block i -> sub-blocks 2i (mixer or attention at attn_layer_idx [1, 3]) and 2i + 1 (GatedMLP).
  assert hybrid.pattern == "M-*-M-*-" and not hybrid.tie_embeddings and hybrid.vocab_size == 72
  assert hybrid.mlp.hidden_size == 128 and hybrid.mlp.activation == "swiglu"  # d_intermediate 40, rounded up to 128
  a = hybrid.attention
  assert (a.num_heads, a.num_kv_heads, a.head_dim, a.rotary_fraction, a.qkv_bias, a.out_bias) == (4, 2, 16, 0.5,
                                                                                                     True, True)
  assert hybrid.mamba2.ngroups == 2 and hybrid.mamba2.chunk_size == 8
  assert mamba_ssm.open_mamba_ssm(os.path.join(FIXTURES, "mamba1_mlp_layernorm")).config.norm == "layernorm"


def test_the_mamba2attn_2p7b_config_maps_to_its_architecture():
  config = mamba_ssm.model_config(MAMBA2ATTN_2P7B)
  a, m = config.attention, config.mamba2
  assert config.pattern == "".join("*" if i in (9, 18, 27, 36, 45, 56) else "M" for i in range(64))
  assert (a.num_heads, a.resolved_kv_heads(), a.resolved_head_dim(2560), a.rotary_dim(2560)) == (30, 30, 128, 64)
  assert (a.d_conv, a.qkv_bias, a.out_bias, a.rope_theta) == (4, False, False, 10000.0)
  assert (m.d_state, m.headdim, m.ngroups, m.resolved_nheads(2560)) == (128, 64, 1, 80)  # mamba_ssm Mamba2 defaults
  assert config.vocab_size == 50288 and config.tie_embeddings and config.residual_in_fp32
  # Parameter count from the state-spaces tensor shapes (Mamba2 in_proj rows 2E + 2N + H, conv over E + 2N channels;
  # MHA in_proj rows (H + 2 KV) P, conv with bias over them, out_proj from H P), against the model ssmjax builds.
  d, E, N, H = 2560, 5120, 128, 80
  mamba_layer = (2 * E + 2 * N + H) * d + (E + 2 * N) * 5 + 3 * H + E + E * d + d
  qkv = (30 + 2 * 30) * 128
  attention_layer = qkv * d + qkv * 5 + 30 * 128 * d + d
  expected = 50288 * d + 58 * mamba_layer + 6 * attention_layer + d
  assert ssmjax.count_params(config) == expected  # about 2.70e9: "2.7b"


@pytest.fixture
def hybrid_copy(tmp_path):
  directory = tmp_path / "mamba2attn"
  shutil.copytree(os.path.join(FIXTURES, "mamba2attn"), directory)
  return directory


def _edit_config(directory, edit):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  edit(cfg)
  with open(path, "w") as f:
    json.dump(cfg, f)


def _as_safetensors(directory, edit):
  """Rewrite pytorch_model.bin as model.safetensors (the other weights file a state-spaces directory may hold)."""
  state = torch_pickle.load(os.path.join(directory, "pytorch_model.bin"))
  arrays = {k: torch_pickle.read(v) for k, v in state.items()}
  edit(arrays)
  os.remove(os.path.join(directory, "pytorch_model.bin"))
  write_safetensors(str(directory), arrays.items())


def test_safetensors_weights_load_the_same(hybrid_copy):
  _, expected = ssmjax.load_pretrained(str(hybrid_copy))
  _as_safetensors(hybrid_copy, lambda arrays: None)
  _, params = ssmjax.load_pretrained(str(hybrid_copy))
  np.testing.assert_array_equal(params["layers_2"]["attention"]["q_proj"], expected["layers_2"]["attention"]["q_proj"])


def test_unexpected_tensor_is_named(hybrid_copy):
  _as_safetensors(hybrid_copy, lambda a: a.update({"backbone.layers.1.mixer.rotary_emb.cos": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match="backbone.layers.1.mixer.rotary_emb.cos"):
    ssmjax.load_pretrained(str(hybrid_copy))


def test_missing_tensor_is_named(hybrid_copy):
  _as_safetensors(hybrid_copy, lambda a: a.pop("backbone.layers.3.mlp.fc2.weight"))
  with pytest.raises(KeyError, match="backbone.layers.3.mlp.fc2.weight"):
    ssmjax.load_pretrained(str(hybrid_copy))


def test_wrongly_shaped_tensor_is_named(hybrid_copy):
  _as_safetensors(hybrid_copy, lambda a: a.update({"backbone.layers.1.mixer.in_proj.weight": np.zeros((10, 32),
                                                                                                        np.float32)}))
  with pytest.raises(ValueError, match="backbone.layers.1.mixer.in_proj.weight"):
    ssmjax.load_pretrained(str(hybrid_copy))


@pytest.mark.parametrize("edit, error, key", [
    (lambda a: a.pop("backbone.layers.1.mixer.conv1d.bias"), KeyError, "backbone.layers.1.mixer.conv1d.bias"),
    (lambda a: a.update({"backbone.layers.3.mixer.conv1d.weight": np.zeros((144, 1, 3), np.float32)}), ValueError,
     "backbone.layers.3.mixer.conv1d.weight"),
], ids=["missing_conv_bias", "wrong_conv_width"])
def test_qkv_conv_tensors_are_checked(tmp_path, edit, error, key):
  directory = tmp_path / "mamba2attn_conv"
  shutil.copytree(os.path.join(FIXTURES, "mamba2attn_conv"), directory)
  _as_safetensors(directory, edit)
  with pytest.raises(error, match=key):
    ssmjax.load_pretrained(str(directory))


@pytest.mark.parametrize("field, value, message", [
    ("attn_cfg", {"num_heads": 4, "num_heads_kv": 2, "head_dim": 16, "causal": True, "d_conv": -1}, "attn_cfg.d_conv"),
    ("attn_cfg", {"num_heads": 4, "head_dim": 16, "causal": True, "mlp_dim": 64}, "attn_cfg.mlp_dim"),
    ("attn_cfg", {"num_heads": 4, "head_dim": 16}, "attn_cfg.causal"),
    ("attn_cfg", {"num_heads": 4, "head_dim": 16, "causal": True, "rotary_emb_dim": 8, "rotary_emb_interleaved": True},
     "rotary_emb_interleaved"),
    ("ssm_cfg", {"layer": "Mamba2", "headdim": 8, "D_has_hdim": True}, "D_has_hdim"),
    ("ssm_cfg", {"layer": "Mamba3"}, "ssm_cfg.layer 'Mamba3'"),
    ("ssm_cfg", {"layer": "Mamba2", "wings": 2}, "wings"),
])
def test_unsupported_config_fields_are_named(hybrid_copy, field, value, message):
  _edit_config(hybrid_copy, lambda cfg: cfg.update({field: value}))
  with pytest.raises(ValueError, match=message):
    ssmjax.load_pretrained(str(hybrid_copy))


def test_missing_files_are_named(hybrid_copy):
  os.remove(hybrid_copy / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
    ssmjax.load_pretrained(str(hybrid_copy), format="mamba_ssm")
  os.remove(hybrid_copy / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    ssmjax.load_pretrained(str(hybrid_copy), format="mamba_ssm")
