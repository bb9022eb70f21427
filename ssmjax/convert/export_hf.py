"""Export an ssmjax model to a HuggingFace transformers directory: ``config.json`` + safetensors, without torch.

The family follows the pattern: all-``M`` Mamba-1 -> ``MambaForCausalLM``, all-``M`` Mamba-2 -> ``Mamba2ForCausalLM``,
``*-`` repeated -> ``LlamaForCausalLM``, any other mix of ``M`` / ``*`` / ``-`` -> ``NemotronHForCausalLM``. Each family
has fixed semantics, and a config that differs from them in a way that changes the logits (e.g. LayerNorm-1p or
partial RoPE for Llama, RoPE or gated MLPs for NemotronH) is refused with an error naming every such field; fields
that only matter for initialisation are written as faithfully as HF allows.

dt clamp (SPEC §10): HF Mamba2 clamps dt to ``time_step_limit`` and NemotronH to ``[time_step_min, inf)``, so those
fields carry ``mamba2.dt_limit``. A model without a clamp (Megatron's) exports to NemotronH with ``time_step_min = 0``,
which ``from_pretrained`` loads; only a fresh random init from that config (log of 0 in its dt init) would fail.
Tied embeddings are written as an ``lm_head.weight`` copy for NemotronH, which cannot tie.

Tensors are transformed and written one at a time (`SafetensorsWriter`), the inverse of the importers' layouts.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterator, Mapping

import numpy as np

from ssmjax.config import ModelConfig
from ssmjax.convert.tensors import SafetensorsWriter
from ssmjax.mixers.mamba2 import from_group_major

INFINITY = {"__float__": "Infinity"}  # how transformers 5 writes inf in config.json


def _json_float(x: float) -> Any:
  return INFINITY if math.isinf(x) and x > 0 else float(x)


def hf_model_type(config: ModelConfig) -> str:
  """The transformers ``model_type`` an ssmjax config exports to, chosen by its pattern."""
  kinds = set(config.pattern)
  if kinds == {"M"}:
    return "mamba" if config.mamba_version == 1 else "mamba2"
  if config.pattern == "*-" * (len(config.pattern) // 2):
    return "llama"
  return "nemotron_h"


def _problems(config: ModelConfig, model_type: str) -> list[str]:
  """Every way ``config`` differs from what ``model_type`` computes (empty: exportable)."""
  problems, d = [], config.d_model
  has = lambda kind: kind in config.pattern  # noqa: E731
  if has("*") and config.attention.d_conv:
    problems.append(f"attention.d_conv {config.attention.d_conv} (no HF attention has mamba_ssm's conv over q|k|v)")
  if model_type in ("mamba", "mamba2", "nemotron_h") and config.norm != "rmsnorm":
    problems.append(f"norm {config.norm!r} (HF {model_type} uses RMSNorm)")
  if model_type in ("mamba2", "nemotron_h") and has("M"):
    m = config.mamba2
    if config.mamba_version != 2:
      problems.append(f"mamba_version {config.mamba_version} (HF {model_type} has Mamba-2 mixers)")
    elif m.resolved_norm_group_size(d) != m.d_inner(d) // m.ngroups:
      problems.append(f"mamba2.norm_group_size {m.norm_group_size} (HF normalises groups of d_inner / ngroups)")
    if model_type == "mamba2" and m.d_inner(d) % d:
      problems.append(f"Mamba-2 width {m.d_inner(d)} is not a multiple of d_model {d} (HF Mamba2 uses expand)")
    if model_type == "nemotron_h" and not math.isinf(m.dt_limit[1]):
      problems.append(f"mamba2.dt_limit {m.dt_limit} (NemotronH clamps dt only from below)")
  if model_type == "nemotron_h":
    if has("*"):
      a = config.attention
      if a.rotary_fraction:
        problems.append(f"attention.rotary_fraction {a.rotary_fraction} (NemotronH attention has no RoPE)")
      if a.qkv_bias or a.out_bias:
        problems.append("attention biases (NemotronH's q/k/v/o projections have none)")
    if has("-") and config.mlp.activation not in ("gelu", "squared_relu"):
      problems.append(f"mlp.activation {config.mlp.activation!r} (NemotronH MLPs are not gated: gelu or relu2)")
  if model_type == "llama":
    a = config.attention
    if config.norm != "rmsnorm":
      problems.append(f"norm {config.norm!r} (Llama uses RMSNorm)")
    if a.rotary_fraction != 1.0:
      problems.append(f"attention.rotary_fraction {a.rotary_fraction} (Llama applies RoPE to whole heads)")
    if a.qkv_bias != a.out_bias:
      problems.append(f"attention.qkv_bias {a.qkv_bias} != out_bias {a.out_bias} (Llama's attention_bias sets both)")
    if config.mlp.activation != "swiglu":
      problems.append(f"mlp.activation {config.mlp.activation!r} (Llama MLPs are SwiGLU)")
  return problems


def hf_config(config: ModelConfig, model_type: str | None = None, max_position_embeddings: int = 4096) -> dict:
  """The ``config.json`` of the export (raises ValueError naming what HF cannot represent)."""
  model_type = model_type or hf_model_type(config)
  problems = _problems(config, model_type)
  if problems:
    raise ValueError(f"cannot export to HF {model_type!r} (pattern {config.pattern!r}): " + "; ".join(problems))
  d = config.d_model
  common = {"model_type": model_type, "vocab_size": config.vocab_size, "hidden_size": d,
            "tie_word_embeddings": config.tie_embeddings}
  if model_type == "mamba":
    m = config.mamba1
    return {"architectures": ["MambaForCausalLM"], **common, "num_hidden_layers": len(config.pattern),
            "state_size": m.d_state, "expand": m.expand, "intermediate_size": m.d_inner(d), "conv_kernel": m.d_conv,
            "time_step_rank": m.resolved_dt_rank(d), "time_step_min": m.dt_min, "time_step_max": m.dt_max,
            "time_step_floor": m.dt_init_floor, "time_step_scale": m.dt_scale, "layer_norm_epsilon": config.norm_eps,
            "use_bias": m.bias, "use_conv_bias": m.conv_bias, "hidden_act": "silu",
            "residual_in_fp32": config.residual_in_fp32, "use_mambapy": False}
  if model_type == "mamba2":
    m = config.mamba2
    return {"architectures": ["Mamba2ForCausalLM"], **common, "num_hidden_layers": len(config.pattern),
            "num_heads": m.resolved_nheads(d), "head_dim": m.headdim, "expand": m.d_inner(d) // d,
            "state_size": m.d_state, "n_groups": m.ngroups, "conv_kernel": m.d_conv, "chunk_size": m.chunk_size,
            "time_step_min": m.dt_min, "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
            "time_step_limit": [_json_float(x) for x in m.dt_limit], "layer_norm_epsilon": config.norm_eps,
            "use_bias": m.bias, "use_conv_bias": m.conv_bias, "hidden_act": "silu", "rms_norm": True,
            "residual_in_fp32": config.residual_in_fp32}
  a = config.attention
  if model_type == "llama":
    return {"architectures": ["LlamaForCausalLM"], **common, "num_hidden_layers": len(config.pattern) // 2,
            "intermediate_size": config.mlp.hidden_size, "num_attention_heads": a.num_heads,
            "num_key_value_heads": a.resolved_kv_heads(), "head_dim": a.resolved_head_dim(d), "hidden_act": "silu",
            "rms_norm_eps": config.norm_eps, "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta},
            "rope_theta": a.rope_theta, "max_position_embeddings": max_position_embeddings,
            "attention_bias": a.qkv_bias, "mlp_bias": config.mlp.bias, "initializer_range": config.init_std}
  m = config.mamba2
  names = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
  return {"architectures": ["NemotronHForCausalLM"], **common, "tie_word_embeddings": False,
          "layers_block_type": [names[k] for k in config.pattern], "num_attention_heads": a.num_heads,
          "num_key_value_heads": a.resolved_kv_heads(), "head_dim": a.resolved_head_dim(d),
          "intermediate_size": config.mlp.hidden_size,
          "mlp_hidden_act": {"gelu": "gelu", "squared_relu": "relu2"}.get(config.mlp.activation, "relu2"),
          "mlp_bias": config.mlp.bias, "attention_bias": False, "mamba_num_heads": m.resolved_nheads(d),
          "mamba_head_dim": m.headdim, "n_groups": m.ngroups, "ssm_state_size": m.d_state, "conv_kernel": m.d_conv,
          "chunk_size": m.chunk_size, "expand": max(1, m.d_inner(d) // d), "mamba_hidden_act": "silu",
          "use_bias": m.bias, "use_conv_bias": m.conv_bias, "time_step_min": m.dt_limit[0],
          "time_step_max": m.dt_max, "time_step_floor": m.dt_init_floor,
          "time_step_limit": [m.dt_limit[0], INFINITY], "layer_norm_epsilon": config.norm_eps,
          "residual_in_fp32": config.residual_in_fp32, "max_position_embeddings": max_position_embeddings,
          "initializer_range": config.init_std}


def _t(kernel: np.ndarray) -> np.ndarray:
  """(in, out) -> PyTorch (out, in)."""
  return np.ascontiguousarray(np.asarray(kernel).T)


def _conv(kernel: np.ndarray) -> np.ndarray:
  """(K, C) -> PyTorch depthwise (C, 1, K)."""
  return np.ascontiguousarray(np.asarray(kernel).T[:, None, :])


def _mamba2(p: dict, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  m, d = config.mamba2, config.d_model
  dims = dict(d_inner=m.d_inner(d), ngroups=m.ngroups, d_state=m.d_state, nheads=m.resolved_nheads(d))
  yield "in_proj.weight", _t(from_group_major(np.asarray(p["in_proj"]), "in_proj", **dims))
  if m.bias:
    yield "in_proj.bias", from_group_major(np.asarray(p["in_proj_bias"]), "in_proj", **dims)
  yield "conv1d.weight", _conv(from_group_major(np.asarray(p["conv1d"]["kernel"]), "conv", **dims))
  if m.conv_bias:
    yield "conv1d.bias", from_group_major(np.asarray(p["conv1d"]["bias"]), "conv", **dims)
  yield from (("dt_bias", p["dt_bias"]), ("A_log", p["A_log"]), ("D", p["D"]), ("norm.weight", p["norm"]["scale"]))
  yield "out_proj.weight", _t(p["out_proj"])
  if m.bias:
    yield "out_proj.bias", p["out_proj_bias"]


def _mamba1(p: dict, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  in_proj = np.asarray(p["in_proj"])
  yield "in_proj.weight", _t(in_proj.reshape(in_proj.shape[0], -1))  # (D, 2, E) -> rows [x, z]
  if config.mamba1.bias:
    yield "in_proj.bias", np.asarray(p["in_proj_bias"]).reshape(-1)
  yield "conv1d.weight", _conv(p["conv1d"]["kernel"])
  if config.mamba1.conv_bias:
    yield "conv1d.bias", p["conv1d"]["bias"]
  yield from (("x_proj.weight", _t(p["x_proj"])), ("dt_proj.weight", _t(p["dt_proj"])),
              ("dt_proj.bias", p["dt_proj_bias"]), ("A_log", p["A_log"]), ("D", p["D"]),
              ("out_proj.weight", _t(p["out_proj"])))
  if config.mamba1.bias:
    yield "out_proj.bias", p["out_proj_bias"]


def _attention(p: dict, names=("q_proj", "k_proj", "v_proj", "o_proj")) -> Iterator[tuple[str, np.ndarray]]:
  for name, hf in zip(("q_proj", "k_proj", "v_proj"), names):
    kernel = np.asarray(p[name])
    yield f"{hf}.weight", _t(kernel.reshape(kernel.shape[0], -1))
    if name + "_bias" in p:
      yield f"{hf}.bias", np.asarray(p[name + "_bias"]).reshape(-1)
  o_proj = np.asarray(p["o_proj"])
  yield f"{names[3]}.weight", _t(o_proj.reshape(-1, o_proj.shape[-1]))
  if "o_proj_bias" in p:
    yield f"{names[3]}.bias", p["o_proj_bias"]


def _mlp(p: dict, names: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
  for name in ("fc1", "gate", "fc2"):
    if name in p:
      yield f"{names[name]}.weight", _t(p[name])
    if name + "_bias" in p:
      yield f"{names[name]}.bias", p[name + "_bias"]


def hf_tensors(config: ModelConfig, params: dict, model_type: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """The export's ``(name, array)`` pairs in transformers' names and layouts, produced one at a time (each top-level
  entry of ``params`` is read once, except the embedding of a tied NemotronH export, read twice)."""
  model_type = model_type or hf_model_type(config)
  if model_type == "llama":
    yield "model.embed_tokens.weight", params["embed"]["embedding"]
    for i in range(len(config.pattern) // 2):
      attention, mlp = params[f"layers_{2 * i}"], params[f"layers_{2 * i + 1}"]
      yield f"model.layers.{i}.input_layernorm.weight", attention["norm"]["scale"]
      for name, value in _attention(attention["attention"]):
        yield f"model.layers.{i}.self_attn.{name}", value
      yield f"model.layers.{i}.post_attention_layernorm.weight", mlp["norm"]["scale"]
      for name, value in _mlp(mlp["mlp"], {"fc1": "up_proj", "gate": "gate_proj", "fc2": "down_proj"}):
        yield f"model.layers.{i}.mlp.{name}", value
    yield "model.norm.weight", params["final_norm"]["scale"]
  else:
    yield "backbone.embeddings.weight", params["embed"]["embedding"]
    for i, kind in enumerate(config.pattern):
      layer = params[f"layers_{i}"]
      yield f"backbone.layers.{i}.norm.weight", layer["norm"]["scale"]
      if kind == "M":
        mixer = _mamba1(layer["mixer"], config) if config.mamba_version == 1 else _mamba2(layer["mixer"], config)
      elif kind == "*":
        mixer = _attention(layer["attention"])
      else:
        mixer = _mlp(layer["mlp"], {"fc1": "up_proj", "fc2": "down_proj"})
      for name, value in mixer:
        yield f"backbone.layers.{i}.mixer.{name}", value
    yield "backbone.norm_f.weight", params["final_norm"]["scale"]
  if not config.tie_embeddings:
    yield "lm_head.weight", _t(params["lm_head"])
  elif model_type == "nemotron_h":  # NemotronH never ties: write the embedding as the output layer
    yield "lm_head.weight", params["embed"]["embedding"]


def export_hf(config: ModelConfig, params: Mapping, directory: str, dtype: str | None = None,
              model_type: str | None = None, max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Write ``config.json`` and the safetensors of ``params`` into the existing ``directory``; returns file names.

  ``params``: the parameter tree, or any mapping whose top-level entries are read once each (`StoredParams` restores
  each on access, so the export holds about one layer). ``dtype``: cast every tensor to it (default: keep each
  parameter's dtype).
  """
  model_type = model_type or hf_model_type(config)
  hf = hf_config(config, model_type)
  writer = SafetensorsWriter(directory, max_shard_bytes=max_shard_bytes)
  for name, value in hf_tensors(config, params, model_type):
    value = np.asarray(value)
    value = value.astype(dtype) if dtype else value
    hf.setdefault("dtype", str(value.dtype))  # the embedding's, written first
    writer.add(name, value)
  files = writer.close()
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  return ["config.json", *files]
