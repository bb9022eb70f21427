#!/usr/bin/env python
"""Build tiny random state-spaces (mamba_ssm) and Megatron-LM checkpoints with PyTorch reference logits.

Writes ``tests/fixtures/mamba_ssm/<case>/`` (``config.json`` + ``pytorch_model.bin``) and
``tests/fixtures/megatron/<case>/`` (``latest_checkpointed_iteration.txt`` + ``release/mp_rank_XX/
model_optim_rng.pt``), each with ``reference.npz``: ``seq_lens``, ``input_ids_T{T}`` int32 [2, T] and
``logits_T{T}`` float32 [2, T, vocab] (plus ``logits_noclamp_T{T}`` for the Megatron hybrid, see below).

Where each reference comes from (stated per case in ``reference.npz["reference"]``):

* state-spaces ``mamba1`` / ``mamba2``: HF transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (pure-torch
  paths) on the same weights, re-saved under state-spaces names (``backbone.embedding``, tied ``lm_head.weight``
  sharing the embedding's storage) with vocab padding. mamba_ssm itself needs CUDA, so it is not run.
* state-spaces ``mamba2attn`` (Mamba-2 + MHA with partial RoPE, GQA and biases at ``attn_layer_idx``, GatedMLPs) and
  ``mamba1_mlp_layernorm`` (Mamba-1 + GatedMLPs + LayerNorms with biases): HF has no such models, so the reference
  is an independent float64 NumPy forward pass written here from ``mamba_ssm``'s ``MixerModel``, ``Block``,
  ``GatedMLP`` and ``MHA`` source; it reuses the Mamba mixer functions of ``make_hf_fixtures.py`` that match HF to
  3e-6, and `main` checks it against the HF models on the first two cases too.
* state-spaces ``mamba2attn_conv`` (``mamba2attn-2.7b``'s attn_cfg in miniature: MHA whose q|k|v pass through a
  causal depthwise conv of width 4) and ``mamba2attn_conv_gqa`` (the conv with GQA, biases and GatedMLPs): the same
  NumPy forward with the attention layers in float64 PyTorch (`mha_torch_forward`, ``nn.Conv1d`` and
  ``F.scaled_dot_product_attention`` as ``mamba_ssm/modules/mha.py`` uses them), which reproduces the NumPy MHA on
  ``mamba2attn`` to 4e-15.
* Megatron ``hybrid`` / ``hybrid_tp2`` (pattern ``M-M*-M``, GQA attention without position encoding, GELU MLPs):
  HF ``NemotronHForCausalLM`` on the same weights (SPEC §6.4). NemotronH clamps dt >= ``time_step_min`` (1e-3) and
  Megatron does not, so ``logits_T*`` come from the stock NemotronH (compare with ``mamba2.dt_limit = (1e-3, inf)``)
  and ``logits_noclamp_T*`` from the same model with its mixers' ``time_step_limit`` set to ``(0, inf)``, i.e.
  Megatron's own semantics.
  ``hybrid_tp2`` holds the same weights split into tensor-parallel ranks by SPEC §6.2b's rules.
* Megatron ``mamba2`` (pure Mamba-2 from the hybrid ratios 0/0): HF ``Mamba2ForCausalLM`` (no dt clamp).
* Megatron ``gpt`` / ``gpt_tp2`` / ``gpt_legacy`` (the 8B Transformer's recipe: LayerNorm-1p with biases, MHA with
  RoPE on half of each head, squared-ReLU MLP, untied): an independent PyTorch forward pass written here from
  Megatron's ``TransformerLayer`` / ``get_query_key_value_tensors`` / ``apply_rotary_pos_emb``, reading the fused
  Megatron tensors directly. ``gpt`` uses megatron-core local-spec names, ``gpt_legacy`` the older nested
  ``language_model.encoder`` names.

``tests/fixtures/torch_pickle/tensors.pt`` holds what the torch-free reader must handle (dtypes, views, shared
storage, Megatron-style ``args`` and RNG state) with the expected values in ``expected.npz``.

Every value comes from fixed seeds; rerunning rewrites identical tensors. Needs torch and transformers.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import math
import os
import random
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_fixtures as hf_fixtures  # noqa: E402  (the Mamba mixers' NumPy references and randomisation)

SEQ_LENS = (5, 29)
BATCH = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------

def _torch(array):
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.asarray(array, dtype=np.float32)))


def _inputs(seed, vocab):
  rng = np.random.default_rng(seed + 50_000)
  return {T: rng.integers(0, vocab, size=(BATCH, T)).astype(np.int32) for T in SEQ_LENS}


def _save_reference(directory, inputs, logits, reference, **extra):
  import torch
  import transformers

  out = {"seq_lens": np.asarray(SEQ_LENS, np.int32), "reference": np.asarray(reference),
         "versions": np.asarray(f"torch {torch.__version__}; transformers {transformers.__version__}")}
  for T in SEQ_LENS:
    out[f"input_ids_T{T}"] = inputs[T]
    out[f"logits_T{T}"] = logits[T].astype(np.float32)
    for name, values in extra.items():
      out[f"{name}_T{T}"] = values[T].astype(np.float32)
  np.savez(os.path.join(directory, "reference.npz"), **out)


def _fresh(directory):
  if os.path.isdir(directory):
    shutil.rmtree(directory)
  os.makedirs(directory)


def _hf_model(cls_name, config, seed):
  import torch
  import transformers

  torch.manual_seed(seed)
  model = getattr(transformers, cls_name)._from_config(config, attn_implementation="eager", dtype=torch.float32)
  model.eval()
  hf_fixtures.randomise_(model, seed)
  return model


def _hf_logits(model, inputs):
  return {T: hf_fixtures._forward_logits(model, ids) for T, ids in inputs.items()}


def _state_numpy(model):
  return {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}


def _max_diff(a, b):
  return max(float(np.max(np.abs(a[T] - b[T]))) for T in SEQ_LENS)


# ----------------------------------------------------------------------------
# state-spaces: files and the NumPy reference
# ----------------------------------------------------------------------------

def _layer_norm(x, w, b, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _ss_norm(h, w, prefix):
  if prefix + "bias" in w:
    return _layer_norm(h, w[prefix + "weight"], w[prefix + "bias"])
  return hf_fixtures._rms(h, w[prefix + "weight"], 1e-5)


def _rotary(x, rotary_dim, base):
  """flash_attn RotaryEmbedding (non-interleaved) on the first rotary_dim dims; x [B, L, H, P]."""
  if rotary_dim == 0:
    return x
  inv = 1.0 / base ** (np.arange(0, rotary_dim, 2) / rotary_dim)
  ang = np.arange(x.shape[1])[:, None] * inv[None]  # [L, rotary_dim / 2]
  cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
  x1, x2 = x[..., : rotary_dim // 2], x[..., rotary_dim // 2 : rotary_dim]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., rotary_dim:]], -1)


def _mha(u, p, attn):
  """mamba_ssm MHA (d_conv 0, mlp_dim 0): in_proj rows [q, k, v], rotary, causal softmax, out_proj."""
  B, L, _ = u.shape
  H, KV, P = attn["num_heads"], attn.get("num_heads_kv", attn["num_heads"]), attn["head_dim"]
  qkv = u @ p["in_proj.weight"].T + p.get("in_proj.bias", 0.0)
  q = qkv[..., : H * P].reshape(B, L, H, P)
  k = qkv[..., H * P : (H + KV) * P].reshape(B, L, KV, P)
  v = qkv[..., (H + KV) * P :].reshape(B, L, KV, P)
  q = _rotary(q, attn.get("rotary_emb_dim", 0), attn.get("rotary_emb_base", 10000.0))
  k = _rotary(k, attn.get("rotary_emb_dim", 0), attn.get("rotary_emb_base", 10000.0))
  k, v = np.repeat(k, H // KV, axis=2), np.repeat(v, H // KV, axis=2)  # torch.repeat_interleave
  s = np.einsum("blhp,bshp->bhls", q, k) / math.sqrt(P)
  s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
  s = np.exp(s - s.max(-1, keepdims=True))
  ctx = np.einsum("bhls,bshp->blhp", s / s.sum(-1, keepdims=True), v).reshape(B, L, H * P)
  return ctx @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0)


def _rotary_torch(x, rotary_dim, base):
  """flash_attn's ``RotaryEmbedding(rotary_dim, base, interleaved=False)`` at positions 0..L-1, x [B, L, H, P]."""
  import torch

  if rotary_dim == 0:
    return x
  inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
  freqs = torch.outer(torch.arange(x.shape[1], dtype=torch.float64), inv_freq)  # [L, rotary_dim / 2]
  cos = torch.cat([freqs.cos(), freqs.cos()], -1)[None, :, None]
  sin = torch.cat([freqs.sin(), freqs.sin()], -1)[None, :, None]
  rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
  first, second = rot.chunk(2, dim=-1)
  return torch.cat([rot * cos + torch.cat([-second, first], -1) * sin, rest], -1)


def mha_torch_forward(u, p, attn):
  """mamba_ssm ``MHA.forward`` without a cache (mlp_dim 0), in float64 PyTorch on the state-spaces tensors ``p``.

  in_proj (rows [q, k, v]); with ``d_conv`` = W > 0 a depthwise ``nn.Conv1d(qkv, qkv, W, padding=W-1, groups=qkv)``
  with bias over the q|k|v channels, keeping the first L outputs (no activation); heads; rotary on q and k; kv heads
  repeated (``repeat_interleave``); ``F.scaled_dot_product_attention(is_causal=True)``; out_proj. Written from the
  semantics of ``mamba_ssm/modules/mha.py`` (its non-``causal_conv1d`` fallback), independently of ssmjax.
  """
  import torch
  import torch.nn.functional as F

  def tensor(name):
    return torch.from_numpy(np.asarray(p[name], np.float64)) if name in p else None

  B, L, d = u.shape
  H = attn["num_heads"]
  KV = attn.get("num_heads_kv") or H
  P = attn.get("head_dim") or d // H
  W, qkv_dim = attn.get("d_conv", 0), (H + 2 * KV) * P
  with torch.no_grad():
    qkv = F.linear(torch.from_numpy(np.asarray(u, np.float64)), tensor("in_proj.weight"), tensor("in_proj.bias"))
    if W > 0:
      conv = torch.nn.Conv1d(qkv_dim, qkv_dim, W, padding=W - 1, groups=qkv_dim, dtype=torch.float64)
      conv.weight.copy_(tensor("conv1d.weight"))
      conv.bias.copy_(tensor("conv1d.bias"))
      qkv = conv(qkv.transpose(1, 2))[..., :L].transpose(1, 2)
    q, kv = qkv.split([H * P, 2 * KV * P], dim=-1)
    q, kv = q.reshape(B, L, H, P), kv.reshape(B, L, 2, KV, P)
    rotary_dim, base = attn.get("rotary_emb_dim", 0), attn.get("rotary_emb_base", 10000.0)
    q, k, v = _rotary_torch(q, rotary_dim, base), _rotary_torch(kv[:, :, 0], rotary_dim, base), kv[:, :, 1]
    k, v = k.repeat_interleave(H // KV, dim=2), v.repeat_interleave(H // KV, dim=2)
    context = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                             scale=attn.get("softmax_scale")).transpose(1, 2)
    out = F.linear(context.reshape(B, L, H * P), tensor("out_proj.weight"), tensor("out_proj.bias"))
  return out.numpy()


def ss_numpy_forward(cfg, w, ids, mha=None):
  """MambaLMHeadModel's forward (fused add+norm is the same function as pre-norm) in float64 NumPy.

  Attention layers use ``mha`` (default: the NumPy `_mha` without a q|k|v conv, `mha_torch_forward` with one).
  """
  ssm = dict(cfg.get("ssm_cfg", {}))
  d = cfg["d_model"]
  if mha is None:
    mha = mha_torch_forward if cfg.get("attn_cfg", {}).get("d_conv", 0) else _mha
  h = w["backbone.embedding.weight"][ids]
  for i in range(cfg["n_layer"]):
    pre = f"backbone.layers.{i}."
    u = _ss_norm(h, w, pre + "norm.")
    p = hf_fixtures._sub(w, pre + "mixer.")
    if i in cfg.get("attn_layer_idx", []):
      y = mha(u, p, cfg["attn_cfg"])
    elif ssm.get("layer") == "Mamba2":
      lim = ssm.get("dt_limit")
      y = hf_fixtures._mamba2_mixer(u, p, nheads=ssm.get("expand", 2) * d // ssm["headdim"], headdim=ssm["headdim"],
                                    ngroups=ssm.get("ngroups", 1), dstate=ssm["d_state"], eps=1e-5, dt_limit=lim)
    else:
      c = {"intermediate_size": ssm.get("expand", 2) * d, "time_step_rank": ssm["dt_rank"],
           "state_size": ssm["d_state"]}
      y = hf_fixtures._mamba1_mixer(u, p, c)
    h = h + y
    if cfg.get("d_intermediate", 0) > 0:
      u = _ss_norm(h, w, pre + "norm2.")
      y, gate = np.split(u @ w[pre + "mlp.fc1.weight"].T, 2, axis=-1)
      h = h + (y * hf_fixtures._silu(gate)) @ w[pre + "mlp.fc2.weight"].T
  h = _ss_norm(h, w, "backbone.norm_f.")
  return h @ w["lm_head.weight"].T


def _write_state_spaces(directory, cfg, weights):
  """config.json + pytorch_model.bin; a tied lm_head.weight is the embedding tensor itself (shared storage)."""
  import torch

  _fresh(directory)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
  state = collections.OrderedDict((k, _torch(v)) for k, v in weights.items() if k != "lm_head.weight")
  state["lm_head.weight"] = (state["backbone.embedding.weight"] if cfg.get("tie_embeddings", True)
                             else _torch(weights["lm_head.weight"]))
  torch.save(state, os.path.join(directory, "pytorch_model.bin"))


def _from_hf_names(state):
  out = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in state.items()}
  if "lm_head.weight" not in out:
    out["lm_head.weight"] = out["backbone.embedding.weight"]
  return out


def _random_ss_weights(cfg, seed):
  """Random state-spaces weights for every parameter of the config (shapes from mamba_ssm's modules)."""
  rng = np.random.default_rng(seed)
  d, ssm, attn = cfg["d_model"], cfg.get("ssm_cfg", {}), cfg.get("attn_cfg", {})
  vocab = -(-cfg["vocab_size"] // cfg["pad_vocab_size_multiple"]) * cfg["pad_vocab_size_multiple"]
  shapes = {"backbone.embedding.weight": (vocab, d)}
  norm = ("weight",) if cfg.get("rms_norm", True) else ("weight", "bias")
  hidden = -(-cfg.get("d_intermediate", 0) // 128) * 128
  for i in range(cfg["n_layer"]):
    pre = f"backbone.layers.{i}."
    shapes.update({f"{pre}norm.{n}": (d,) for n in norm})
    if i in cfg.get("attn_layer_idx", []):
      H, P, W = attn["num_heads"], attn["head_dim"], attn.get("d_conv", 0)
      qkv = (H + 2 * (attn.get("num_heads_kv") or H)) * P
      shapes[pre + "mixer.in_proj.weight"] = (qkv, d)
      if attn.get("qkv_proj_bias", True):
        shapes[pre + "mixer.in_proj.bias"] = (qkv,)
      if W:
        shapes.update({pre + "mixer.conv1d.weight": (qkv, 1, W), pre + "mixer.conv1d.bias": (qkv,)})
      shapes[pre + "mixer.out_proj.weight"] = (d, H * P)
      if attn.get("out_proj_bias", True):
        shapes[pre + "mixer.out_proj.bias"] = (d,)
    elif ssm["layer"] == "Mamba2":
      E, G, N = ssm.get("expand", 2) * d, ssm.get("ngroups", 1), ssm["d_state"]
      H, C = E // ssm["headdim"], E + 2 * G * N
      shapes.update({pre + "mixer.in_proj.weight": (2 * E + 2 * G * N + H, d), pre + "mixer.conv1d.weight": (C, 1, 4),
                     pre + "mixer.conv1d.bias": (C,), pre + "mixer.dt_bias": (H,), pre + "mixer.A_log": (H,),
                     pre + "mixer.D": (H,), pre + "mixer.norm.weight": (E,), pre + "mixer.out_proj.weight": (d, E)})
    else:
      E, N, R = ssm["expand"] * d, ssm["d_state"], ssm["dt_rank"]
      shapes.update({pre + "mixer.in_proj.weight": (2 * E, d), pre + "mixer.conv1d.weight": (E, 1, 4),
                     pre + "mixer.conv1d.bias": (E,), pre + "mixer.x_proj.weight": (R + 2 * N, E),
                     pre + "mixer.dt_proj.weight": (E, R), pre + "mixer.dt_proj.bias": (E,),
                     pre + "mixer.A_log": (E, N), pre + "mixer.D": (E,), pre + "mixer.out_proj.weight": (d, E)})
    if hidden:
      shapes.update({f"{pre}norm2.{n}": (d,) for n in norm})
      shapes.update({pre + "mlp.fc1.weight": (2 * hidden, d), pre + "mlp.fc2.weight": (d, hidden)})
  shapes.update({f"backbone.norm_f.{n}": (d,) for n in norm})
  if not cfg.get("tie_embeddings", True):
    shapes["lm_head.weight"] = (vocab, d)
  weights = {k: hf_fixtures._random_value(k, s, rng, hidden_size=d, tied=False) for k, s in shapes.items()}
  if cfg.get("tie_embeddings", True):
    weights["lm_head.weight"] = weights["backbone.embedding.weight"]
  return {k: np.asarray(v, np.float32).astype(np.float64) for k, v in weights.items()}


def make_state_spaces(out_dir):
  from transformers import Mamba2Config, MambaConfig

  base = {"d_intermediate": 0, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
          "fused_add_norm": True, "tie_embeddings": True}
  hf_cases = {
      "mamba1": (1101, dict(base, d_model=32, n_layer=2, vocab_size=50, pad_vocab_size_multiple=16,
                            ssm_cfg={"layer": "Mamba1", "d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": 4}),
                 "MambaForCausalLM",
                 MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                             conv_kernel=4, time_step_rank=4, layer_norm_epsilon=1e-5, use_bias=False,
                             use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=True)),
      "mamba2": (1102, dict(base, d_model=32, n_layer=2, vocab_size=90, pad_vocab_size_multiple=16,
                            ssm_cfg={"layer": "Mamba2", "d_state": 16, "d_conv": 4, "expand": 2, "headdim": 8,
                                     "ngroups": 2, "chunk_size": 8}),
                 "Mamba2ForCausalLM",
                 Mamba2Config(vocab_size=96, hidden_size=32, num_heads=8, head_dim=8, expand=2, state_size=16,
                              n_groups=2, num_hidden_layers=2, conv_kernel=4, chunk_size=8, layer_norm_epsilon=1e-5,
                              use_bias=False, use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=True)),
  }
  for name, (seed, cfg, cls, hf_config) in hf_cases.items():
    model = _hf_model(cls, hf_config, seed)
    inputs = _inputs(seed, cfg["vocab_size"])
    logits = _hf_logits(model, inputs)
    weights = _from_hf_names(_state_numpy(model))
    directory = os.path.join(out_dir, name)
    _write_state_spaces(directory, cfg, weights)
    _save_reference(directory, inputs, logits, f"transformers {cls} on the same weights")
    numpy_logits = {T: ss_numpy_forward(cfg, weights, ids.astype(np.int64)) for T, ids in inputs.items()}
    print(f"state-spaces {name:22s} NumPy reference vs HF: {_max_diff(numpy_logits, logits):.1e}")

  numpy_cases = {
      "mamba2attn": (1103, dict(base, d_model=32, n_layer=4, vocab_size=70, pad_vocab_size_multiple=8,
                                d_intermediate=40, attn_layer_idx=[1, 3], tie_embeddings=False,
                                ssm_cfg={"layer": "Mamba2", "d_state": 16, "d_conv": 4, "expand": 2, "headdim": 8,
                                         "ngroups": 2, "chunk_size": 8},
                                attn_cfg={"num_heads": 4, "num_heads_kv": 2, "head_dim": 16, "rotary_emb_dim": 8,
                                          "causal": True})),
      "mamba1_mlp_layernorm": (1104, dict(base, d_model=32, n_layer=2, vocab_size=61, pad_vocab_size_multiple=8,
                                          d_intermediate=20, rms_norm=False,
                                          ssm_cfg={"layer": "Mamba1", "d_state": 8, "d_conv": 4, "expand": 2,
                                                   "dt_rank": 4})),
      # mamba2attn-2.7b's config.json in miniature: the same attn_cfg fields (MHA, H * head_dim != d_model, q|k|v conv
      # of width 4, no biases, RoPE on half of each head), Mamba-2 defaults, no MLP, tied, vocab padded to 16.
      "mamba2attn_conv": (1105, dict(base, d_model=32, n_layer=4, vocab_size=77, pad_vocab_size_multiple=16,
                                     attn_layer_idx=[1, 3],
                                     ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 8, "chunk_size": 8},
                                     attn_cfg={"causal": True, "d_conv": 4, "head_dim": 16, "num_heads": 3,
                                               "out_proj_bias": False, "qkv_proj_bias": False,
                                               "rotary_emb_dim": 8})),
      # The q|k|v conv with GQA (q and k/v blocks of different sizes), projection biases and a GatedMLP.
      "mamba2attn_conv_gqa": (1106, dict(base, d_model=32, n_layer=2, vocab_size=40, pad_vocab_size_multiple=8,
                                         d_intermediate=40, attn_layer_idx=[1], tie_embeddings=False,
                                         ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 8, "ngroups": 2,
                                                  "chunk_size": 8},
                                         attn_cfg={"causal": True, "d_conv": 3, "head_dim": 8, "num_heads": 4,
                                                   "num_heads_kv": 2, "rotary_emb_dim": 4,
                                                   "rotary_emb_base": 500.0})),
  }
  for name, (seed, cfg) in numpy_cases.items():
    weights = _random_ss_weights(cfg, seed)
    inputs = _inputs(seed, cfg["vocab_size"])
    logits = {T: ss_numpy_forward(cfg, weights, ids.astype(np.int64)) for T, ids in inputs.items()}
    directory = os.path.join(out_dir, name)
    _write_state_spaces(directory, cfg, weights)
    conv = cfg.get("attn_cfg", {}).get("d_conv", 0)
    _save_reference(directory, inputs, logits, "float64 NumPy forward pass of mamba_ssm's modules" +
                    (", attention layers in float64 PyTorch (mha_torch_forward)" if conv else "") +
                    " (scripts/make_convert_fixtures.py)")
    print(f"state-spaces {name:22s} logits std {logits[SEQ_LENS[-1]].std():.3f}")
    if cfg["attn_layer_idx"] and not conv:  # the two MHA references agree where both apply
      torch_logits = {T: ss_numpy_forward(cfg, weights, ids.astype(np.int64), mha=mha_torch_forward)
                      for T, ids in inputs.items()}
      print(f"state-spaces {name:22s} PyTorch MHA reference vs NumPy: {_max_diff(torch_logits, logits):.1e}")


# ----------------------------------------------------------------------------
# Megatron: files, tensor-parallel splitting and references
# ----------------------------------------------------------------------------

def _megatron_args(**fields):
  import torch

  defaults = dict(pipeline_model_parallel_size=1, params_dtype=torch.float32, fp16=False, bf16=False,
                  attention_dropout=0.0, hidden_dropout=0.0, seq_length=4096, max_position_embeddings=4096,
                  tokenizer_type="GPTSentencePieceTokenizer", tokenizer_model="tokenizer.model",
                  make_vocab_size_divisible_by=16, init_method_std=0.02, norm_epsilon=1e-5)
  return argparse.Namespace(**{**defaults, **fields})


def _write_megatron(directory, args, rank_states):
  """latest_checkpointed_iteration.txt + release/mp_rank_XX/model_optim_rng.pt, as Megatron's save_checkpoint."""
  import torch

  _fresh(directory)
  with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as f:
    f.write("release")
  rng = random.Random(0)
  for rank, state in enumerate(rank_states):
    rank_dir = os.path.join(directory, "release", f"mp_rank_{rank:02d}")
    os.makedirs(rank_dir)
    model = _to_torch(state)
    checkpoint = {"args": args, "checkpoint_version": 3.0, "iteration": 0, "model": model,
                  "rng_state": [{"random_rng_state": rng.getstate(),
                                 "np_rng_state": np.random.RandomState(0).get_state(),
                                 "torch_rng_state": torch.ByteTensor(16).zero_(), "cuda_rng_state": None,
                                 "rng_tracker_states": {}}]}
    torch.save(checkpoint, os.path.join(rank_dir, "model_optim_rng.pt"))


def _to_torch(tree):
  if isinstance(tree, dict):
    return collections.OrderedDict((k, _to_torch(v)) for k, v in tree.items())
  return _torch(tree) if isinstance(tree, np.ndarray) else tree


def _nest_legacy(state):
  """Flat legacy names -> the nested dict Megatron's legacy GPTModel.state_dict_for_save_checkpoint writes."""
  nested = {"language_model": {"embedding": {"word_embeddings": {}}, "encoder": {}, "output_layer": {}}}
  lm = nested["language_model"]
  for key, value in state.items():
    rest = key[len("language_model."):]
    if rest.startswith("embedding.word_embeddings."):
      lm["embedding"]["word_embeddings"][rest.rsplit(".", 1)[1]] = value
    elif rest.startswith("output_layer."):
      lm["output_layer"][rest.rsplit(".", 1)[1]] = value
    elif rest.startswith("encoder."):
      lm["encoder"][rest[len("encoder."):]] = value
    else:
      lm[rest] = value
  return nested


def _interleave_qkv(q, k, v, groups):
  """Separate q [H*P, D], k/v [G*P, D] -> Megatron's fused rows, per group g: [q heads of g, k_g, v_g]."""
  q_rows, kv_rows = q.shape[0] // groups, k.shape[0] // groups
  blocks = []
  for g in range(groups):
    blocks += [q[g * q_rows:(g + 1) * q_rows], k[g * kv_rows:(g + 1) * kv_rows], v[g * kv_rows:(g + 1) * kv_rows]]
  return np.concatenate(blocks, axis=0)


def _split_tp(state, tp, kinds):
  """One full state dict -> ``tp`` rank state dicts, by the per-key kind (SPEC §6.2b)."""
  ranks = [collections.OrderedDict() for _ in range(tp)]
  for key, value in state.items():
    kind = kinds(key)
    for r in range(tp):
      if kind == "replicated" or not isinstance(value, np.ndarray):
        ranks[r][key] = value
      elif kind == "rows":
        ranks[r][key] = np.split(value, tp, axis=0)[r]
      elif kind == "cols":
        ranks[r][key] = np.split(value, tp, axis=1)[r]
      else:  # ("mamba", sizes): consecutive segments each split into tp parts, rank r takes part r of each
        sizes = kind[1]
        segments = np.split(value, np.cumsum(sizes)[:-1], axis=0)
        ranks[r][key] = np.concatenate([np.split(s, tp, axis=0)[r] for s in segments], axis=0)
  return ranks


def _hybrid_kinds(E, G, N, H):
  def kinds(key):
    if key.endswith("mixer.in_proj.weight"):
      return ("mamba", [E, E, G * N, G * N, H])  # [z, x, B, C, dt], each sliced by whole heads / groups
    if key.endswith(("mixer.conv1d.weight", "mixer.conv1d.bias")):
      return ("mamba", [E, G * N, G * N])
    if key.endswith(("mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight", "linear_qkv.weight",
                     "linear_fc1.weight", "word_embeddings.weight", "output_layer.weight")):
      return "rows"
    if key.endswith(("out_proj.weight", "linear_proj.weight", "linear_fc2.weight")):
      return "cols"
    return "replicated"
  return kinds


def make_megatron_hybrid(out_dir):
  from transformers import NemotronHConfig

  seed, pattern = 1201, "M-M*-M"
  common = dict(vocab_size=96, hidden_size=32, hybrid_override_pattern=pattern, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, intermediate_size=64, mlp_hidden_act="gelu", mamba_num_heads=8,
                mamba_head_dim=8, n_groups=2, ssm_state_size=16, conv_kernel=4, expand=2, chunk_size=8,
                layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True, mlp_bias=False, attention_bias=False,
                residual_in_fp32=False, tie_word_embeddings=False)
  model = _hf_model("NemotronHForCausalLM", NemotronHConfig(**common), seed)
  unclamped = _hf_model("NemotronHForCausalLM", NemotronHConfig(**common), seed)
  for module in unclamped.modules():  # NemotronH hard-codes (time_step_min, inf); Megatron has no clamp
    if hasattr(module, "time_step_limit"):
      module.time_step_limit = (0.0, float("inf"))
  inputs = _inputs(seed, 96)
  logits, logits_noclamp = _hf_logits(model, inputs), _hf_logits(unclamped, inputs)
  print(f"megatron hybrid: NemotronH dt clamp moves the logits by {_max_diff(logits, logits_noclamp):.1e}")

  # In memory NemotronH's modules are under "model." (its files say "backbone.").
  w = {k.removeprefix("backbone.").removeprefix("model."): v for k, v in _state_numpy(model).items()}
  state = collections.OrderedDict([("embedding.word_embeddings.weight", w["embeddings.weight"])])
  for i, kind in enumerate(pattern):
    src, dst = f"layers.{i}.", f"decoder.layers.{i}."
    if kind == "M":
      state[dst + "norm.weight"] = w[src + "norm.weight"]
      for name in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
                   "out_proj.weight"):
        state[dst + "mixer." + name] = w[src + "mixer." + name]
    elif kind == "*":
      state[dst + "self_attention.linear_qkv.layer_norm_weight"] = w[src + "norm.weight"]
      state[dst + "self_attention.linear_qkv.weight"] = _interleave_qkv(
          w[src + "mixer.q_proj.weight"], w[src + "mixer.k_proj.weight"], w[src + "mixer.v_proj.weight"], groups=2)
      state[dst + "self_attention.linear_proj.weight"] = w[src + "mixer.o_proj.weight"]
      # Transformer Engine pickles its modules' extra state as a BytesIO.
      state[dst + "self_attention.linear_qkv._extra_state"] = io.BytesIO(b"fp8 meta")
      state[dst + "self_attention.linear_proj._extra_state"] = None
      state[dst + "self_attention.core_attention._extra_state"] = None
    else:
      state[dst + "mlp.linear_fc1.layer_norm_weight"] = w[src + "norm.weight"]
      state[dst + "mlp.linear_fc1.weight"] = w[src + "mixer.up_proj.weight"]
      state[dst + "mlp.linear_fc2.weight"] = w[src + "mixer.down_proj.weight"]
      state[dst + "mlp.linear_fc1._extra_state"] = io.BytesIO(b"")
  state["decoder.final_norm.weight"] = w["norm_f.weight"]
  state["output_layer.weight"] = w["lm_head.weight"]

  arch = dict(num_layers=6, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, group_query_attention=True,
              num_query_groups=2, kv_channels=8, hybrid_override_pattern=pattern, hybrid_attention_ratio=0.0,
              hybrid_mlp_ratio=0.0, normalization="RMSNorm", apply_layernorm_1p=False,
              position_embedding_type="none", rotary_percent=1.0, squared_relu=False, swiglu=False,
              add_bias_linear=False, untie_embeddings_and_output_weights=True, padded_vocab_size=96,
              mamba_state_dim=16, mamba_head_dim=8, mamba_num_groups=2)
  reference = ("transformers NemotronHForCausalLM (GELU MLP, no RoPE) on the same weights; logits_T*: stock NemotronH "
               "(dt >= time_step_min 1e-3), logits_noclamp_T*: mixers' time_step_limit (0, inf) (Megatron: no clamp)")
  for name, tp in (("hybrid", 1), ("hybrid_tp2", 2)):
    directory = os.path.join(out_dir, name)
    ranks = _split_tp(state, tp, _hybrid_kinds(E=64, G=2, N=16, H=8)) if tp > 1 else [state]
    _write_megatron(directory, _megatron_args(tensor_model_parallel_size=tp, **arch), ranks)
    _save_reference(directory, inputs, logits, reference, logits_noclamp=logits_noclamp)


def make_megatron_mamba2(out_dir):
  from transformers import Mamba2Config

  seed = 1202
  config = Mamba2Config(vocab_size=64, hidden_size=32, num_heads=8, head_dim=8, expand=2, state_size=16, n_groups=2,
                        num_hidden_layers=3, conv_kernel=4, chunk_size=8, layer_norm_epsilon=1e-5, use_bias=False,
                        use_conv_bias=True, residual_in_fp32=False, tie_word_embeddings=False)
  model = _hf_model("Mamba2ForCausalLM", config, seed)
  inputs = _inputs(seed, 64)
  logits = _hf_logits(model, inputs)
  w = {k.removeprefix("backbone."): v for k, v in _state_numpy(model).items()}
  state = collections.OrderedDict([("embedding.word_embeddings.weight", w["embeddings.weight"])])
  for i in range(3):
    # Newer Megatron fuses the Mamba pre-norm into in_proj (key mixer.in_proj.layer_norm_weight).
    state[f"decoder.layers.{i}.mixer.in_proj.layer_norm_weight"] = w[f"layers.{i}.norm.weight"]
    for name in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
                 "out_proj.weight"):
      state[f"decoder.layers.{i}.mixer.{name}"] = w[f"layers.{i}.mixer.{name}"]
    state[f"decoder.layers.{i}.mixer.in_proj._extra_state"] = None
  state["decoder.final_norm.weight"] = w["norm_f.weight"]
  state["output_layer.weight"] = w["lm_head.weight"]
  args = _megatron_args(num_layers=3, hidden_size=32, ffn_hidden_size=128, num_attention_heads=4,
                        group_query_attention=False, hybrid_override_pattern=None, hybrid_attention_ratio=0.0,
                        hybrid_mlp_ratio=0.0, normalization="RMSNorm", position_embedding_type="none",
                        add_bias_linear=False, untie_embeddings_and_output_weights=True, padded_vocab_size=64,
                        tensor_model_parallel_size=1, mamba_state_dim=16, mamba_head_dim=8, mamba_num_groups=2)
  directory = os.path.join(out_dir, "mamba2")
  _write_megatron(directory, args, [state])
  _save_reference(directory, inputs, logits, "transformers Mamba2ForCausalLM on the same weights (no dt clamp)")


def gpt_torch_forward(state, args, ids, names):
  """Megatron GPT forward in PyTorch from the fused checkpoint tensors (LayerNorm-1p, partial RoPE, squared ReLU)."""
  import torch
  import torch.nn.functional as F

  t = {k: _torch(v) for k, v in state.items() if isinstance(v, np.ndarray)}
  heads, hd, d = args.num_attention_heads, args.kv_channels, args.hidden_size
  groups = args.num_query_groups if args.group_query_attention else heads
  rot = int(hd * args.rotary_percent)
  eps = args.norm_epsilon

  def ln(x, prefix):  # apply_layernorm_1p: gamma is stored zero-centred
    return F.layer_norm(x, (d,), t[prefix + "weight"] + 1.0, t[prefix + "bias"], eps)

  def rope(x):  # x [B, L, heads, hd]; Megatron's rotate_half on the first rot dims, base rotary_base
    inv = 1.0 / (args.rotary_base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    freqs = torch.outer(torch.arange(x.shape[1], dtype=torch.float64), inv)
    emb = torch.cat([freqs, freqs], -1)[None, :, None, :]
    cos, sin = emb.cos().float(), emb.sin().float()
    xr, xp = x[..., :rot], x[..., rot:]
    x1, x2 = xr.chunk(2, dim=-1)
    return torch.cat([xr * cos + torch.cat([-x2, x1], -1) * sin, xp], -1)

  with torch.no_grad():
    x = t[names["embedding"]][torch.from_numpy(ids.astype(np.int64))]
    B, L = ids.shape
    for i in range(args.num_layers):
      p = names["layer"].format(i)
      u = ln(x, p + names["attention_norm"])
      qkv = (u @ t[p + names["qkv"]].T).view(B, L, groups, heads // groups + 2, hd)
      q = qkv[:, :, :, :-2].reshape(B, L, heads, hd)
      k = qkv[:, :, :, -2].repeat_interleave(heads // groups, dim=2)
      v = qkv[:, :, :, -1].repeat_interleave(heads // groups, dim=2)
      q, k = rope(q), rope(k)
      s = torch.einsum("blhd,bshd->bhls", q, k) / math.sqrt(hd)
      s = s.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool)), float("-inf"))
      ctx = torch.einsum("bhls,bshd->blhd", torch.softmax(s, -1), v).reshape(B, L, heads * hd)
      x = x + ctx @ t[p + names["proj"]].T
      u = ln(x, p + names["mlp_norm"])
      x = x + torch.relu(u @ t[p + names["fc1"]].T).square() @ t[p + names["fc2"]].T
    x = ln(x, names["final_norm"])
    return (x @ t[names["output"]].T).numpy()


GPT_NAMES = {
    "gpt": dict(embedding="embedding.word_embeddings.weight", output="output_layer.weight",
                layer="decoder.layers.{}.", attention_norm="input_layernorm.", qkv="self_attention.linear_qkv.weight",
                proj="self_attention.linear_proj.weight", mlp_norm="pre_mlp_layernorm.",
                fc1="mlp.linear_fc1.weight", fc2="mlp.linear_fc2.weight", final_norm="decoder.final_layernorm."),
    "gpt_legacy": dict(embedding="language_model.embedding.word_embeddings.weight",
                       output="language_model.output_layer.weight", layer="language_model.encoder.layers.{}.",
                       attention_norm="input_norm.", qkv="self_attention.query_key_value.weight",
                       proj="self_attention.dense.weight", mlp_norm="post_attention_norm.",
                       fc1="mlp.dense_h_to_4h.weight", fc2="mlp.dense_4h_to_h.weight",
                       final_norm="language_model.encoder.final_norm."),
}


def make_megatron_gpt(out_dir):
  seed = 1203
  rng = np.random.default_rng(seed)
  args = _megatron_args(num_layers=2, hidden_size=32, ffn_hidden_size=128, num_attention_heads=4,
                        group_query_attention=False, num_query_groups=1, kv_channels=8, normalization="LayerNorm",
                        apply_layernorm_1p=True, position_embedding_type="rope", rotary_percent=0.5,
                        rotary_base=10000, squared_relu=True, swiglu=False, add_bias_linear=False,
                        untie_embeddings_and_output_weights=True, padded_vocab_size=80,
                        tensor_model_parallel_size=1)
  d, ffn, vocab = 32, 128, 80
  shapes = {"embedding": (vocab, d), "output": (vocab, d), "final_norm": (d,)}
  layer_shapes = {"attention_norm": (d,), "qkv": (3 * d, d), "proj": (d, d), "mlp_norm": (d,), "fc1": (ffn, d),
                  "fc2": (d, ffn)}
  values = {}
  for role, shape in shapes.items():
    values[role] = rng.standard_normal(shape) * (0.1 if role == "final_norm" else 1 / math.sqrt(d))
  values["final_norm_bias"] = 0.1 * rng.standard_normal(d)
  for i in range(2):
    for role, shape in layer_shapes.items():
      scale = 0.1 if len(shape) == 1 else (0.5 if role in ("proj", "fc2") else 1.0) / math.sqrt(shape[1])
      values[(i, role)] = rng.standard_normal(shape) * scale
      if role.endswith("norm"):
        values[(i, role + "_bias")] = 0.1 * rng.standard_normal(d)
  values["embedding"] *= math.sqrt(d)  # embeddings ~ N(0, 1)
  inputs = _inputs(seed, vocab)
  reference = None
  for name in ("gpt", "gpt_legacy", "gpt_tp2"):
    n = GPT_NAMES["gpt_legacy" if name == "gpt_legacy" else "gpt"]
    state = collections.OrderedDict([(n["embedding"], values["embedding"])])
    for i in range(2):
      p = n["layer"].format(i)
      for role in ("attention_norm", "mlp_norm"):
        state[p + n[role] + "weight"], state[p + n[role] + "bias"] = values[(i, role)], values[(i, role + "_bias")]
      for role in ("qkv", "proj", "fc1", "fc2"):
        state[p + n[role]] = values[(i, role)]
    state[n["final_norm"] + "weight"], state[n["final_norm"] + "bias"] = values["final_norm"], values["final_norm_bias"]
    state[n["output"]] = values["output"]
    logits = {T: gpt_torch_forward(state, args, ids, n) for T, ids in inputs.items()}
    if reference is None:
      reference = logits
    assert _max_diff(logits, reference) == 0.0
    directory = os.path.join(out_dir, name)
    if name == "gpt_legacy":
      state["language_model.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (np.arange(0, 4, 2) / 4))
      _write_megatron(directory, args, [_nest_legacy(state)])
    elif name == "gpt_tp2":
      def kinds(key):
        if key.endswith(("linear_qkv.weight", "linear_fc1.weight", "word_embeddings.weight", "output_layer.weight")):
          return "rows"
        return "cols" if key.endswith(("linear_proj.weight", "linear_fc2.weight")) else "replicated"
      _write_megatron(directory, argparse.Namespace(**{**vars(args), "tensor_model_parallel_size": 2}),
                      _split_tp(state, 2, kinds))
    else:
      _write_megatron(directory, args, [state])
    _save_reference(directory, inputs, logits, "independent PyTorch forward pass of Megatron's GPT (LayerNorm-1p, "
                                               "partial RoPE, squared ReLU) from the fused checkpoint tensors")
  print(f"megatron gpt logits std {reference[SEQ_LENS[-1]].std():.3f}")


def make_torch_pickle(out_dir):
  """``tensors.pt``: what the torch-free reader must handle, with the expected values in ``expected.npz``."""
  import torch

  _fresh(out_dir)
  gen = torch.Generator().manual_seed(1301)
  base = torch.randn(4, 6, generator=gen)
  shared = torch.arange(10, dtype=torch.float32)
  tensors = collections.OrderedDict([
      ("float32", base), ("transposed", base.t()), ("strided_slice", base[1:3, ::2]),
      ("shared_head", shared[:4]), ("shared_tail", shared[6:]),
      ("bfloat16", torch.randn(3, 5, generator=gen).to(torch.bfloat16)),
      ("float16", torch.randn(7, generator=gen).half()),
      ("float64", torch.randn(2, 2, generator=gen, dtype=torch.float64)), ("int64", torch.arange(-3, 3)),
      ("int8", torch.tensor([-128, 0, 127], dtype=torch.int8)), ("bool", torch.tensor([True, False, True])),
      ("scalar", torch.tensor(2.5)), ("empty", torch.zeros(0, 3)),
      ("float8_e4m3fn", torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)),
  ])
  obj = {"tensors": tensors, "parameter": torch.nn.Parameter(torch.ones(2)),
         "args": argparse.Namespace(num_layers=3, params_dtype=torch.bfloat16, name="tiny", ratios=(0.5, 1.0)),
         "extra_state": io.BytesIO(b"transformer engine"), "nothing": None, "blob": b"\x00\x01",
         "rng_state": [{"np_rng_state": np.random.RandomState(0).get_state(), "torch_rng_state": torch.get_rng_state(),
                        "random_rng_state": random.Random(0).getstate()}],
         "nested": [1, 2.0, "three", (4, {"five": 5})], "checkpoint_version": 3.0}
  torch.save(obj, os.path.join(out_dir, "tensors.pt"))
  expected = {k: v.float().numpy() if v.dtype in (torch.bfloat16, torch.float8_e4m3fn) else v.numpy()
              for k, v in tensors.items()}
  np.savez(os.path.join(out_dir, "expected.npz"), **expected,
           np_rng_state_key=np.random.RandomState(0).get_state()[1])


# ----------------------------------------------------------------------------

def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
  args = ap.parse_args(argv)
  import torch
  from transformers.utils import logging as hf_logging

  hf_fixtures._check_pure_torch()
  hf_logging.set_verbosity_error()
  torch.set_num_threads(1)
  make_state_spaces(os.path.join(args.out, "mamba_ssm"))
  megatron_dir = os.path.join(args.out, "megatron")
  make_megatron_hybrid(megatron_dir)
  make_megatron_mamba2(megatron_dir)
  make_megatron_gpt(megatron_dir)
  make_torch_pickle(os.path.join(args.out, "torch_pickle"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
