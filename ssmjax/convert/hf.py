"""HuggingFace transformers checkpoints: ``open_hf(directory).build()`` -> parameters.

Supported ``model_type``s: ``mamba`` (MambaForCausalLM), ``mamba2`` (Mamba2ForCausalLM), ``nemotron_h``
(NemotronHForCausalLM, Mamba-2 / attention / MLP hybrids) and ``llama`` (LlamaForCausalLM). The directory holds
``config.json`` and ``model.safetensors`` (or shards with ``model.safetensors.index.json``). Every tensor must be used
and every parameter found; the result is checked against the shapes of ``LanguageModel(config)``.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Callable

import numpy as np

from ssmjax.config import (AttentionConfig, Mamba1Config, Mamba2Config, MLPConfig, ModelConfig,
                           state_spaces_pattern)
from ssmjax.convert import layouts
from ssmjax.convert.params import Conversion, Plan
from ssmjax.convert.tensors import TensorReader, TensorSource

_REQUIRED = object()


def _decode_special_floats(obj: dict) -> Any:
  """transformers 5 writes inf as ``{"__float__": "Infinity"}`` (older files use a bare ``Infinity``)."""
  if set(obj) == {"__float__"}:
    return float(obj["__float__"])
  return obj


def read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in {directory!r}")
  with open(path) as f:
    return json.load(f, object_hook=_decode_special_floats)


class _Fields:
  """``fields("a", "b_old_name", default=...)``: a config value under its current or older name."""

  def __init__(self, hf: dict):
    self.hf = hf

  def __call__(self, *names: str, default: Any = _REQUIRED) -> Any:
    for name in names:
      if name in self.hf and self.hf[name] is not None:
        return self.hf[name]
    if default is _REQUIRED:
      raise ValueError(f"config.json of model_type {self.hf.get('model_type')!r} is missing field {names[0]!r}")
    return default


def _prefixed(reader: TensorSource, prefix: str) -> Callable[[str], np.ndarray]:
  return lambda name: reader.take(prefix + name)


def _output_layer(reader: TensorSource, tied: bool) -> Plan:
  """The untied output layer, if any. A tied checkpoint may still store a copy of ``lm_head.weight``: skip it."""
  if "lm_head.weight" not in reader:
    if not tied:
      raise KeyError(f"tensor 'lm_head.weight' is missing from the untied {reader.description}")
    return []
  if tied:
    reader.skip("lm_head.weight")
    return []
  return [("lm_head", lambda: layouts.linear(reader.take("lm_head.weight")))]


def _norm(reader: TensorSource, key: str) -> Callable[[], dict]:
  return lambda: {"scale": reader.take(key)}


def _mamba(hf: dict, reader: TensorSource) -> tuple[ModelConfig, Plan]:
  f = _Fields(hf)
  d_model, n_layer, d_inner = f("hidden_size"), f("num_hidden_layers"), f("intermediate_size")
  if d_inner % d_model:
    raise ValueError(f"intermediate_size ({d_inner}) must be a multiple of hidden_size ({d_model})")
  dt_rank = f("time_step_rank", default="auto")
  mamba1 = Mamba1Config(
      d_state=f("state_size"), d_conv=f("conv_kernel"), expand=d_inner // d_model,
      dt_rank=math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank), dt_min=f("time_step_min", default=1e-3),
      dt_max=f("time_step_max", default=0.1), dt_init_floor=f("time_step_floor", default=1e-4),
      conv_bias=f("use_conv_bias", default=True), bias=f("use_bias", default=False))
  tied = f("tie_word_embeddings", default=True)
  config = ModelConfig(vocab_size=f("vocab_size"), d_model=d_model, pattern=state_spaces_pattern(n_layer),
                       mamba_version=1, mamba1=mamba1, norm="rmsnorm", norm_eps=f("layer_norm_epsilon", default=1e-5),
                       tie_embeddings=tied, residual_in_fp32=f("residual_in_fp32", default=True),
                       init_style="mamba_ssm")

  def layer(i):
    return {"norm": {"scale": reader.take(f"backbone.layers.{i}.norm.weight")},
            "mixer": layouts.mamba1_mixer(_prefixed(reader, f"backbone.layers.{i}.mixer."), d_inner=d_inner,
                                          bias=mamba1.bias, conv_bias=mamba1.conv_bias)}

  plan = [("embed", lambda: {"embedding": reader.take("backbone.embeddings.weight")})]
  plan += [(f"layers_{i}", functools.partial(layer, i)) for i in range(n_layer)]
  plan += [("final_norm", _norm(reader, "backbone.norm_f.weight"))] + _output_layer(reader, tied)
  return config, plan


def mamba2_layer(reader: TensorSource, prefix: str, config: ModelConfig) -> dict:
  """A Mamba-2 mixer stored with mamba_ssm / HF names under ``prefix``."""
  m = config.mamba2
  return layouts.mamba2_mixer(_prefixed(reader, prefix), d_inner=m.d_inner(config.d_model), ngroups=m.ngroups,
                              d_state=m.d_state, nheads=m.resolved_nheads(config.d_model), bias=m.bias,
                              conv_bias=m.conv_bias)


def _mamba2(hf: dict, reader: TensorSource) -> tuple[ModelConfig, Plan]:
  f = _Fields(hf)
  d_model, n_layer = f("hidden_size"), f("num_hidden_layers")
  mamba2 = Mamba2Config(
      d_state=f("state_size"), d_conv=f("conv_kernel"), expand=f("expand", default=2), headdim=f("head_dim"),
      ngroups=f("n_groups", default=1), nheads=f("num_heads"), chunk_size=f("chunk_size", default=256),
      dt_min=f("time_step_min", default=1e-3), dt_max=f("time_step_max", default=0.1),
      dt_init_floor=f("time_step_floor", default=1e-4),
      dt_limit=tuple(float(x) for x in f("time_step_limit", default=(0.0, float("inf")))),
      conv_bias=f("use_conv_bias", default=True), bias=f("use_bias", default=False))
  tied = f("tie_word_embeddings", default=True)
  config = ModelConfig(vocab_size=f("vocab_size"), d_model=d_model, pattern=state_spaces_pattern(n_layer),
                       mamba_version=2, mamba2=mamba2, norm="rmsnorm", norm_eps=f("layer_norm_epsilon", default=1e-5),
                       tie_embeddings=tied, residual_in_fp32=f("residual_in_fp32", default=True),
                       init_style="mamba_ssm")

  def layer(i):
    return {"norm": {"scale": reader.take(f"backbone.layers.{i}.norm.weight")},
            "mixer": mamba2_layer(reader, f"backbone.layers.{i}.mixer.", config)}

  plan = [("embed", lambda: {"embedding": reader.take("backbone.embeddings.weight")})]
  plan += [(f"layers_{i}", functools.partial(layer, i)) for i in range(n_layer)]
  plan += [("final_norm", _norm(reader, "backbone.norm_f.weight"))] + _output_layer(reader, tied)
  return config, plan


NEMOTRON_H_LAYER_TYPES = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*",
                          "mlp": "-", "moe": "E"}
NEMOTRON_H_ACTIVATIONS = {"relu2": "squared_relu", "gelu": "gelu"}


def _nemotron_h_pattern(f: _Fields) -> str:
  layer_types = f("layers_block_type", default=None)
  if layer_types is not None:
    unknown = sorted({t for t in layer_types if t not in NEMOTRON_H_LAYER_TYPES})
    if unknown:
      raise ValueError(f"layers_block_type has unknown layer types {unknown}; known: {sorted(NEMOTRON_H_LAYER_TYPES)}")
    pattern = "".join(NEMOTRON_H_LAYER_TYPES[t] for t in layer_types)
  else:
    pattern = f("hybrid_override_pattern")
  if "E" in pattern:
    raise ValueError(f"NemotronH mixture-of-experts layers ('E' / 'moe') are not supported: pattern {pattern!r}")
  return pattern


def _nemotron_h(hf: dict, reader: TensorSource) -> tuple[ModelConfig, Plan]:
  f = _Fields(hf)
  d_model, pattern = f("hidden_size"), _nemotron_h_pattern(f)
  act = f("mlp_hidden_act", default="relu2")
  if act not in NEMOTRON_H_ACTIVATIONS:
    raise ValueError(f"mlp_hidden_act {act!r} is not supported; expected one of {sorted(NEMOTRON_H_ACTIVATIONS)}")
  # HF's NemotronH clamps dt from below at time_step_min in its full-sequence path, whatever time_step_limit says.
  # time_step_min 0 (an ssmjax export of a model without a clamp) cannot seed the dt init: dt_min keeps its default.
  time_step_min = float(f("time_step_min", "mamba_dt_min", default=1e-3))
  mamba2 = Mamba2Config(
      d_state=f("ssm_state_size"), d_conv=f("conv_kernel", "mamba_d_conv", default=4),
      headdim=f("mamba_head_dim"), nheads=f("mamba_num_heads"), ngroups=f("n_groups", "mamba_n_groups", default=8),
      chunk_size=f("chunk_size", "mamba_chunk_size", default=128),
      dt_min=time_step_min if time_step_min > 0 else 1e-3, dt_max=f("time_step_max", "mamba_dt_max", default=0.1),
      dt_init_floor=f("time_step_floor", "mamba_dt_init_floor", default=1e-4),
      dt_limit=(time_step_min, float("inf")),
      conv_bias=f("use_conv_bias", "mamba_conv_bias", default=True), bias=f("use_bias", default=False))
  heads = f("num_attention_heads")
  attention = AttentionConfig(num_heads=heads, num_kv_heads=f("num_key_value_heads", default=heads),
                              head_dim=f("head_dim", default=d_model // heads), rotary_fraction=0.0)
  mlp = MLPConfig(hidden_size=f("intermediate_size"), activation=NEMOTRON_H_ACTIVATIONS[act],
                  bias=f("mlp_bias", default=False))
  config = ModelConfig(vocab_size=f("vocab_size"), d_model=d_model, pattern=pattern, mamba_version=2, mamba2=mamba2,
                       attention=attention, mlp=mlp, norm="rmsnorm", norm_eps=f("layer_norm_epsilon", default=1e-5),
                       tie_embeddings=False, residual_in_fp32=False, init_style="megatron")
  root = "backbone." if "backbone.embeddings.weight" in reader else "model."

  def layer(i, kind):
    prefix = f"{root}layers.{i}.mixer."
    built = {"norm": {"scale": reader.take(f"{root}layers.{i}.norm.weight")}}
    if kind == "M":
      built["mixer"] = mamba2_layer(reader, prefix, config)
    elif kind == "*":
      built["attention"] = layouts.attention(_prefixed(reader, prefix), num_heads=attention.num_heads,
                                             num_kv_heads=attention.resolved_kv_heads(),
                                             head_dim=attention.resolved_head_dim(d_model), qkv_bias=False,
                                             out_bias=False)
    else:
      built["mlp"] = layouts.mlp(_prefixed(reader, prefix), gated=False, bias=mlp.bias,
                                 names=("up_proj", None, "down_proj"))
    return built

  plan = [("embed", lambda: {"embedding": reader.take(root + "embeddings.weight")})]
  plan += [(f"layers_{i}", functools.partial(layer, i, kind)) for i, kind in enumerate(pattern)]
  plan += [("final_norm", _norm(reader, root + "norm_f.weight"))] + _output_layer(reader, tied=False)
  return config, plan


def _llama(hf: dict, reader: TensorSource) -> tuple[ModelConfig, Plan]:
  f = _Fields(hf)
  d_model, n_layer, heads = f("hidden_size"), f("num_hidden_layers"), f("num_attention_heads")
  rope = f("rope_parameters", "rope_scaling", default={}) or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"rope_type {rope_type!r} is not supported; only the default (unscaled) RoPE is")
  if f("hidden_act", default="silu") != "silu":
    raise ValueError(f"hidden_act {f('hidden_act')!r} is not supported; Llama MLPs are SwiGLU ('silu')")
  attention_bias = f("attention_bias", default=False)
  attention = AttentionConfig(num_heads=heads, num_kv_heads=f("num_key_value_heads", default=heads),
                              head_dim=f("head_dim", default=d_model // heads), rotary_fraction=1.0,
                              rope_theta=float(rope.get("rope_theta", f("rope_theta", default=10000.0))),
                              qkv_bias=attention_bias, out_bias=attention_bias)
  mlp = MLPConfig(hidden_size=f("intermediate_size"), activation="swiglu", bias=f("mlp_bias", default=False))
  tied = f("tie_word_embeddings", default=False)
  config = ModelConfig(vocab_size=f("vocab_size"), d_model=d_model, pattern="*-" * n_layer, attention=attention,
                       mlp=mlp, norm="rmsnorm", norm_eps=f("rms_norm_eps", default=1e-6), tie_embeddings=tied,
                       init_style="megatron", init_std=f("initializer_range", default=0.02), init_depth=n_layer)

  def attention_layer(i):
    return {"norm": {"scale": reader.take(f"model.layers.{i}.input_layernorm.weight")},
            "attention": layouts.attention(_prefixed(reader, f"model.layers.{i}.self_attn."), num_heads=heads,
                                           num_kv_heads=attention.resolved_kv_heads(),
                                           head_dim=attention.resolved_head_dim(d_model), qkv_bias=attention_bias,
                                           out_bias=attention_bias)}

  def mlp_layer(i):
    return {"norm": {"scale": reader.take(f"model.layers.{i}.post_attention_layernorm.weight")},
            "mlp": layouts.mlp(_prefixed(reader, f"model.layers.{i}.mlp."), gated=True, bias=mlp.bias,
                               names=("up_proj", "gate_proj", "down_proj"))}

  # Older checkpoints store RoPE's inverse frequencies; they are recomputed from the config.
  for key in reader.keys():
    if key.endswith("rotary_emb.inv_freq"):
      reader.skip(key)
  plan = [("embed", lambda: {"embedding": reader.take("model.embed_tokens.weight")})]
  for i in range(n_layer):
    plan += [(f"layers_{2 * i}", functools.partial(attention_layer, i)),
             (f"layers_{2 * i + 1}", functools.partial(mlp_layer, i))]
  plan += [("final_norm", _norm(reader, "model.norm.weight"))] + _output_layer(reader, tied)
  return config, plan


CONVERTERS: dict[str, Callable[[dict, TensorSource], tuple[ModelConfig, Plan]]] = {
    "mamba": _mamba,
    "mamba2": _mamba2,
    "nemotron_h": _nemotron_h,
    "llama": _llama,
}


def open_hf(path: str) -> Conversion:
  """Open a HuggingFace transformers checkpoint directory for conversion (nothing is read until it is built)."""
  hf = read_hf_config(path)
  model_type = hf.get("model_type")
  if model_type not in CONVERTERS:
    raise ValueError(f"unsupported model_type {model_type!r} in {os.path.join(path, 'config.json')}; supported: "
                     f"{sorted(CONVERTERS)}")
  reader = TensorReader(path)
  config, plan = CONVERTERS[model_type](hf, reader)
  return Conversion(config, reader, plan, info={"format": "hf", "model_type": model_type,
                                                "vocab_size": hf.get("vocab_size")})
