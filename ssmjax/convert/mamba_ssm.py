"""state-spaces (mamba_ssm) checkpoints: ``config.json`` (``MambaConfig`` fields) + ``pytorch_model.bin``.

``MambaLMHeadModel`` (SPEC §4.6, §6.3): ``backbone.embedding``, ``n_layer`` blocks ``backbone.layers.{i}`` each with
``norm`` + ``mixer`` (``Mamba`` / ``Mamba2`` from ``ssm_cfg["layer"]``, or ``MHA`` at ``attn_layer_idx``) and, when
``d_intermediate > 0``, ``norm2`` + ``mlp`` (``GatedMLP``: ``fc1`` rows ``[y, gate]``, ``fc2(y * silu(gate))``, the
hidden size rounded up to a multiple of 128), then ``backbone.norm_f`` and ``lm_head`` (tied to the embedding unless
``tie_embeddings`` is false; a tied state dict still lists ``lm_head.weight``). ``rms_norm`` false means LayerNorms
with biases. The vocabulary is padded to ``pad_vocab_size_multiple``; the embedding's row count is the model's
``vocab_size`` and the unpadded size is reported in ``info``.

In ssmjax a block with an MLP is two sub-blocks, so block i becomes ``layers_{2i}`` (mixer) and ``layers_{2i+1}``
(MLP), as `state_spaces_pattern` lays them out.

``MHA`` (``mamba_ssm/modules/mha.py``): ``in_proj`` rows ``[q (H*P), k (KV*P), v (KV*P)]`` (+ an optional fused
MLP part, ``mlp_dim``), then with ``d_conv`` = W > 0 a depthwise causal ``nn.Conv1d`` over those q|k|v rows
(``conv1d.weight`` (qkv, 1, W) and, PyTorch's default, ``conv1d.bias``; no activation), RoPE on the first
``rotary_emb_dim`` dims of each head (non-interleaved by default), causal softmax attention, ``out_proj``. Projection
biases default to on. The conv becomes the ssmjax attention's ``q_conv1d`` / ``k_conv1d`` / ``v_conv1d``
(``AttentionConfig.d_conv``), as ``mamba2attn-2.7b`` needs. The fused MLP (``mlp_dim > 0``), interleaved rotary,
non-causal attention and a non-default softmax scale have no ssmjax counterpart and are refused with an error naming
the field.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np

from ssmjax.config import (AttentionConfig, Mamba1Config, Mamba2Config, MLPConfig, ModelConfig,
                           state_spaces_pattern)
from ssmjax.convert import layouts, torch_pickle
from ssmjax.convert.params import Conversion, Plan
from ssmjax.convert.tensors import SINGLE_FILE, TensorReader, TensorSource

WEIGHTS_FILE = "pytorch_model.bin"
GATED_MLP_MULTIPLE = 128  # GatedMLP rounds its hidden size up to a multiple of this.

CONFIG_FIELDS = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
                 "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}
MAMBA1_FIELDS = {"layer", "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                 "dt_init_floor", "conv_bias", "bias", "use_fast_path"}
MAMBA2_FIELDS = {"layer", "d_state", "d_conv", "conv_init", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
                 "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias",
                 "conv_bias", "chunk_size", "use_mem_eff_path"}
ATTENTION_FIELDS = {"num_heads", "num_heads_kv", "head_dim", "mlp_dim", "qkv_proj_bias", "out_proj_bias",
                    "softmax_scale", "causal", "d_conv", "rotary_emb_dim", "rotary_emb_base", "rotary_emb_interleaved"}


def read_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in {directory!r}")
  with open(path) as f:
    return json.load(f)


def _unknown(cfg: dict, known: set, where: str) -> None:
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise ValueError(f"config.json: unknown {where} fields {unknown}; known: {sorted(known)}")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(f"config.json: {message}")


def _mamba1_config(ssm: dict) -> Mamba1Config:
  _unknown(ssm, MAMBA1_FIELDS, "ssm_cfg (Mamba1)")
  dt_rank = ssm.get("dt_rank", "auto")
  return Mamba1Config(d_state=ssm.get("d_state", 16), d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2),
                      dt_rank=None if dt_rank == "auto" else int(dt_rank), dt_min=ssm.get("dt_min", 0.001),
                      dt_max=ssm.get("dt_max", 0.1), dt_init_floor=ssm.get("dt_init_floor", 1e-4),
                      dt_scale=ssm.get("dt_scale", 1.0), conv_bias=ssm.get("conv_bias", True),
                      bias=ssm.get("bias", False))


def _mamba2_config(ssm: dict, d_model: int) -> Mamba2Config:
  _unknown(ssm, MAMBA2_FIELDS, "ssm_cfg (Mamba2)")
  expand, headdim = ssm.get("expand", 2), ssm.get("headdim", 64)
  d_inner = expand * d_model
  _require(ssm.get("d_ssm") in (None, d_inner), f"ssm_cfg.d_ssm={ssm.get('d_ssm')} (a Mamba-2 with extra gated-MLP "
                                                 f"channels in in_proj) is not supported; only d_ssm = d_inner")
  _require(not ssm.get("D_has_hdim", False), "ssm_cfg.D_has_hdim=true (D per channel) is not supported")
  _require(ssm.get("rmsnorm", True), "ssm_cfg.rmsnorm=false (no gated norm) is not supported")
  _require(not ssm.get("norm_before_gate", False), "ssm_cfg.norm_before_gate=true is not supported")
  dt_limit = tuple(float(x) for x in ssm.get("dt_limit", (0.0, float("inf"))))
  return Mamba2Config(d_state=ssm.get("d_state", 128), d_conv=ssm.get("d_conv", 4), expand=expand, headdim=headdim,
                      ngroups=ssm.get("ngroups", 1), chunk_size=ssm.get("chunk_size", 256),
                      dt_min=ssm.get("dt_min", 0.001), dt_max=ssm.get("dt_max", 0.1),
                      dt_init_floor=ssm.get("dt_init_floor", 1e-4), dt_limit=dt_limit,
                      A_init_range=tuple(ssm.get("A_init_range", (1.0, 16.0))), conv_bias=ssm.get("conv_bias", True),
                      bias=ssm.get("bias", False))


def _attention_config(attn: dict, d_model: int) -> AttentionConfig:
  _unknown(attn, ATTENTION_FIELDS, "attn_cfg")
  _require("num_heads" in attn, "attn_cfg.num_heads is required when attn_layer_idx is set")
  heads = attn["num_heads"]
  head_dim = attn.get("head_dim") or d_model // heads
  _require(attn.get("causal", False), "attn_cfg.causal must be true (ssmjax attention is causal)")
  d_conv = attn.get("d_conv", 0)
  _require(isinstance(d_conv, int) and d_conv >= 0, f"attn_cfg.d_conv={d_conv!r} must be a non-negative integer")
  _require(attn.get("mlp_dim", 0) == 0, f"attn_cfg.mlp_dim={attn.get('mlp_dim')}: MHA's fused gated MLP is not "
                                        f"supported (only mlp_dim=0)")
  _require(not attn.get("rotary_emb_interleaved", False), "attn_cfg.rotary_emb_interleaved=true is not supported")
  scale = attn.get("softmax_scale")
  _require(scale is None or abs(scale * head_dim**0.5 - 1) < 1e-6,
           f"attn_cfg.softmax_scale={scale} is not supported; only the default 1/sqrt(head_dim)")
  rotary_dim = attn.get("rotary_emb_dim", 0)
  _require(rotary_dim % 2 == 0 and rotary_dim <= head_dim,
           f"attn_cfg.rotary_emb_dim={rotary_dim} must be even and at most head_dim ({head_dim})")
  return AttentionConfig(num_heads=heads, num_kv_heads=attn.get("num_heads_kv") or heads, head_dim=head_dim,
                         rotary_fraction=rotary_dim / head_dim, rope_theta=float(attn.get("rotary_emb_base", 10000.0)),
                         qkv_bias=attn.get("qkv_proj_bias", True), out_bias=attn.get("out_proj_bias", True),
                         d_conv=d_conv)


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def model_config(cfg: dict) -> ModelConfig:
  """The `ModelConfig` of a state-spaces ``config.json`` (MambaConfig fields, mamba_ssm defaults)."""
  _unknown(cfg, CONFIG_FIELDS, "MambaConfig")
  for field in ("d_model", "n_layer", "vocab_size"):
    _require(field in cfg, f"missing field {field!r}")
  d_model, n_layer = cfg["d_model"], cfg["n_layer"]
  ssm = dict(cfg.get("ssm_cfg") or {})
  layer = ssm.get("layer", "Mamba1")
  _require(layer in ("Mamba1", "Mamba2"), f"ssm_cfg.layer {layer!r} is not supported; expected 'Mamba1' or 'Mamba2'")
  attn_idx = tuple(cfg.get("attn_layer_idx") or ())
  d_intermediate = cfg.get("d_intermediate", 0)
  pattern = state_spaces_pattern(n_layer, attn_idx, mlp=d_intermediate > 0)
  fields: dict[str, Any] = {}
  if layer == "Mamba1":
    fields.update(mamba_version=1, mamba1=_mamba1_config(ssm))
  else:
    fields.update(mamba_version=2, mamba2=_mamba2_config(ssm, d_model))
  if attn_idx:
    fields["attention"] = _attention_config(dict(cfg.get("attn_cfg") or {}), d_model)
  if d_intermediate > 0:
    hidden = round_up(d_intermediate, GATED_MLP_MULTIPLE)
    fields["mlp"] = MLPConfig(hidden_size=hidden, activation="swiglu", bias=False)
  vocab = round_up(cfg["vocab_size"], cfg.get("pad_vocab_size_multiple", 8))
  return ModelConfig(vocab_size=vocab, d_model=d_model, pattern=pattern,
                     norm="rmsnorm" if cfg.get("rms_norm", True) else "layernorm", norm_eps=1e-5,
                     tie_embeddings=cfg.get("tie_embeddings", True), residual_in_fp32=cfg.get("residual_in_fp32", True),
                     init_style="mamba_ssm", **fields)


def _norm(reader: TensorSource, prefix: str, layernorm: bool) -> dict:
  out = {"scale": reader.take(prefix + "weight")}
  if layernorm:
    out["bias"] = reader.take(prefix + "bias")
  return out


def _mha(reader: TensorSource, prefix: str, attention: AttentionConfig, d_model: int) -> dict:
  """MHA's fused ``in_proj`` rows ``[q, k, v]`` -> separate q/k/v kernels; its q|k|v conv -> one conv per projection."""
  heads, kv, head_dim = attention.num_heads, attention.resolved_kv_heads(), attention.resolved_head_dim(d_model)
  sizes = [heads * head_dim, kv * head_dim, kv * head_dim]
  pieces = {"in_proj.weight": layouts.split_rows(reader.take(prefix + "in_proj.weight"), sizes, "in_proj.weight")}
  if attention.qkv_bias:
    pieces["in_proj.bias"] = layouts.split_rows(reader.take(prefix + "in_proj.bias"), sizes, "in_proj.bias")

  def get(name: str) -> np.ndarray:
    which, kind = name.split(".")
    if which == "o":
      return reader.take(f"{prefix}out_proj.{kind}")
    return pieces[f"in_proj.{kind}"]["qkv".index(which)]

  params = layouts.attention(get, num_heads=heads, num_kv_heads=kv, head_dim=head_dim, qkv_bias=attention.qkv_bias,
                             out_bias=attention.out_bias, names=("q", "k", "v", "o"))
  if attention.d_conv:
    weight_name, bias_name = prefix + "conv1d.weight", prefix + "conv1d.bias"
    weight = reader.take(weight_name)
    if weight.shape != (sum(sizes), 1, attention.d_conv):
      raise ValueError(f"{weight_name} has shape {weight.shape}, expected (qkv channels, 1, d_conv) = "
                       f"{(sum(sizes), 1, attention.d_conv)}")
    kernels = layouts.split_rows(weight, sizes, weight_name)
    biases = layouts.split_rows(reader.take(bias_name), sizes, bias_name)
    for name, kernel, bias, n_heads in zip("qkv", kernels, biases, (heads, kv, kv)):
      params[f"{name}_conv1d"] = {"kernel": layouts.conv(kernel).reshape(attention.d_conv, n_heads, head_dim),
                                  "bias": bias.reshape(n_heads, head_dim)}
  return params


def _gated_mlp(reader: TensorSource, prefix: str) -> dict:
  """GatedMLP: ``fc1`` rows ``[y, gate]`` -> ssmjax swiglu ``fc1`` (y) and ``gate``."""
  y, gate = layouts.split_rows(reader.take(prefix + "fc1.weight"), 2, "fc1.weight")
  fc2 = reader.take(prefix + "fc2.weight")
  return {"fc1": layouts.linear(y), "gate": layouts.linear(gate), "fc2": layouts.linear(fc2)}


def _open_weights(directory: str) -> TensorSource:
  weights = os.path.join(directory, WEIGHTS_FILE)
  if os.path.exists(weights):
    state = torch_pickle.load(weights)
    if not isinstance(state, dict):
      raise ValueError(f"{weights} holds a {type(state).__name__}, expected a state dict")
    return torch_pickle.StateDictSource(state, f"state dict in {weights}")
  if os.path.exists(os.path.join(directory, SINGLE_FILE)):
    return TensorReader(directory)
  raise FileNotFoundError(f"no {WEIGHTS_FILE} (or {SINGLE_FILE}) in {directory}")


def open_mamba_ssm(directory: str) -> Conversion:
  """Open a state-spaces checkpoint directory for conversion."""
  cfg = read_config(directory)
  config = model_config(cfg)
  reader = _open_weights(directory)
  layernorm = config.norm == "layernorm"
  mlp = config.mlp if "-" in config.pattern else None
  step = 2 if mlp else 1

  def block(i: int, kind: str) -> dict:
    prefix = f"backbone.layers.{i}."
    out = {"norm": _norm(reader, prefix + "norm.", layernorm)}
    if kind == "*":
      out["attention"] = _mha(reader, prefix + "mixer.", config.attention, config.d_model)
    elif config.mamba_version == 2:
      m = config.mamba2
      out["mixer"] = layouts.mamba2_mixer(lambda name: reader.take(prefix + "mixer." + name),
                                          d_inner=m.d_inner(config.d_model), ngroups=m.ngroups, d_state=m.d_state,
                                          nheads=m.resolved_nheads(config.d_model), bias=m.bias, conv_bias=m.conv_bias)
    else:
      m1 = config.mamba1
      out["mixer"] = layouts.mamba1_mixer(lambda name: reader.take(prefix + "mixer." + name),
                                          d_inner=m1.d_inner(config.d_model), bias=m1.bias, conv_bias=m1.conv_bias)
    return out

  def mlp_block(i: int) -> dict:
    prefix = f"backbone.layers.{i}."
    return {"norm": _norm(reader, prefix + "norm2.", layernorm), "mlp": _gated_mlp(reader, prefix + "mlp.")}

  plan: Plan = [("embed", lambda: {"embedding": reader.take("backbone.embedding.weight")})]
  for i in range(cfg["n_layer"]):
    plan.append((f"layers_{step * i}", functools.partial(block, i, config.pattern[step * i])))
    if mlp:
      plan.append((f"layers_{step * i + 1}", functools.partial(mlp_block, i)))
  plan.append(("final_norm", functools.partial(_norm, reader, "backbone.norm_f.", layernorm)))
  plan += _output_layer(reader, config.tie_embeddings)
  info = {"format": "mamba_ssm", "vocab_size": cfg["vocab_size"]}
  return Conversion(config, reader, plan, info)


def _output_layer(reader: TensorSource, tied: bool) -> Plan:
  if tied:
    if "lm_head.weight" in reader:  # the tied copy MambaLMHeadModel.state_dict() lists
      reader.skip("lm_head.weight")
    return []
  return [("lm_head", lambda: layouts.linear(reader.take("lm_head.weight")))]

