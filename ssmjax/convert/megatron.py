"""NVIDIA Megatron-LM checkpoints in the legacy ``torch`` format (the paper's releases), merging tensor-parallel shards.

Layout (SPEC §6.1, §6.2b): ``<root>/latest_checkpointed_iteration.txt`` holds ``release`` or an iteration number;
``<root>/{release|iter_0000123}/mp_rank_{00,01,...}/model_optim_rng.pt`` is one ``torch.save`` dict per
tensor-parallel rank with ``args`` (the run's argparse Namespace: the architecture comes from it),
``checkpoint_version`` and ``model`` (the state dict). Pipeline parallelism (``mp_rank_00_000``) and distributed
(``torch_dist``) checkpoints are refused.

Models: ``MambaModel`` (hybrid or pure Mamba-2: state-dict keys contain ``.mixer.``; the layer pattern from
``hybrid_override_pattern`` or the hybrid ratios) and ``GPTModel`` (``*-`` per layer), with megatron-core names
(Transformer Engine or local spec) or the older ``language_model.encoder`` names. Attention QKV rows are grouped per
query group, ``[q (heads/groups x P), k (P), v (P)]`` per group (SPEC §1.5).

Tensor parallelism: column-parallel weights are sliced by output rows (embedding and output layer by vocab rows, QKV
by whole query groups, fc1 per rank; a SwiGLU fc1 is ``[gate_r, up_r]`` per rank), row-parallel weights (out_proj,
linear_proj, fc2) by input columns, norms replicated. A Mamba in_proj slice is ``[z_r, x_r, B_r, C_r, dt_r]`` and a
conv slice ``[x_r, B_r, C_r]`` for the rank's whole groups, which is exactly a block of ssmjax's group-major layout:
each rank's slice is re-laid out on its own and the results are concatenated along the group axis.

Megatron's Mamba-2 does not clamp dt, so the converted config has ``dt_limit = (0, inf)``; HF's NemotronH clamps
``dt >= time_step_min`` (SPEC §10): to compare against it, set ``mamba2.dt_limit = (time_step_min, inf)``.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import types
from typing import Any

import numpy as np

from ssmjax.config import AttentionConfig, Mamba2Config, MLPConfig, ModelConfig, hybrid_pattern
from ssmjax.convert import layouts, torch_pickle
from ssmjax.convert.params import Conversion, Plan
from ssmjax.convert.tensors import TensorSource
from ssmjax.mixers.mamba2 import to_group_major

TRACKER_FILE = "latest_checkpointed_iteration.txt"
RANK_FILES = ("model_optim_rng.pt", "model_rng.pt")
IGNORED_SUFFIXES = ("._extra_state", ".inv_freq")  # Transformer Engine state, RoPE buffers: recomputed or unused
_REQUIRED = object()


def find_rank_files(path: str) -> list[str]:
  """The ``model_optim_rng.pt`` of every tensor-parallel rank, from a root, an iteration directory or a rank file."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Megatron checkpoint {path!r} does not exist")
  iteration_dir = path
  tracker = os.path.join(path, TRACKER_FILE)
  if os.path.exists(tracker):
    with open(tracker) as f:
      text = f.read().strip()
    if text == "release":
      iteration_dir = os.path.join(path, "release")
    elif text.isdigit():
      iteration_dir = os.path.join(path, f"iter_{int(text):07d}")
    else:
      raise ValueError(f"{tracker}: expected 'release' or an iteration number, got {text!r}")
    if not os.path.isdir(iteration_dir):
      raise FileNotFoundError(f"{tracker} names {os.path.basename(iteration_dir)!r}, but {iteration_dir} does not "
                              f"exist")
  elif re.fullmatch(r"mp_rank_\d\d", os.path.basename(os.path.normpath(path))):
    iteration_dir = os.path.dirname(os.path.normpath(path))
  if glob.glob(os.path.join(iteration_dir, "*.distcp")) or os.path.exists(os.path.join(iteration_dir, "common.pt")):
    raise ValueError(f"{iteration_dir} is a distributed (torch_dist) checkpoint; only the legacy torch format is "
                     f"supported (Megatron can convert with --ckpt-convert-format torch)")
  if glob.glob(os.path.join(iteration_dir, "mp_rank_[0-9][0-9]_[0-9][0-9][0-9]")):
    raise ValueError(f"{iteration_dir} holds pipeline-parallel shards (mp_rank_XX_YYY); only pipeline-parallel size 1 "
                     f"is supported")
  rank_dirs = sorted(glob.glob(os.path.join(iteration_dir, "mp_rank_[0-9][0-9]")))
  if not rank_dirs:
    raise FileNotFoundError(f"no {TRACKER_FILE} in {path} and no mp_rank_00/ directory in {iteration_dir}")
  files = []
  for rank, directory in enumerate(rank_dirs):
    if os.path.basename(directory) != f"mp_rank_{rank:02d}":
      raise FileNotFoundError(f"tensor-parallel rank directory mp_rank_{rank:02d} is missing from {iteration_dir}")
    found = [os.path.join(directory, name) for name in RANK_FILES if os.path.exists(os.path.join(directory, name))]
    if not found:
      raise FileNotFoundError(f"{directory} holds no {RANK_FILES[0]}")
    files.append(found[0])
  return files


class ShardedSource(TensorSource):
  """The ``model`` state dicts of all tensor-parallel ranks; `take` merges a tensor's slices by ``how``."""

  def __init__(self, states: list[dict[str, Any]], files: list[str]):
    super().__init__()
    self.states, self.files = states, files
    self.tp = len(states)
    self.description = f"Megatron checkpoint {os.path.dirname(os.path.dirname(files[0]))}"
    keys = set(states[0])
    for state, file in zip(states[1:], files[1:]):
      if set(state) != keys:
        diff = sorted(keys.symmetric_difference(state))[:5]
        raise ValueError(f"{file} and {files[0]} hold different tensors (e.g. {diff})")
    self._keys = sorted(keys)

  def keys(self) -> list[str]:
    return self._keys

  def __contains__(self, key: str) -> bool:
    return key in self.states[0]

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.states[0][key].shape)

  def shards(self, key: str) -> list[np.ndarray]:
    """Every rank's slice of ``key`` (marks it used)."""
    if key not in self:
      raise KeyError(f"tensor {key!r} is missing from the {self.description}")
    self._used.add(key)
    self._recent.append(key)
    out = []
    for state, file in zip(self.states, self.files):
      if not torch_pickle.is_tensor(state[key]):
        raise ValueError(f"{file}: entry {key!r} is a {type(state[key]).__name__}, not a tensor")
      out.append(torch_pickle.read(state[key]))
    return out

  def take(self, key: str, how: str = "replicated") -> np.ndarray:
    """``how``: ``replicated`` (rank 0's copy), ``rows`` (concatenate along axis 0) or ``cols`` (axis 1)."""
    if how == "replicated":
      return super().take(key)
    return np.concatenate(self.shards(key), axis={"rows": 0, "cols": 1}[how])

  def _read(self, key: str) -> np.ndarray:
    value = self.states[0][key]
    if not torch_pickle.is_tensor(value):
      raise ValueError(f"{self.files[0]}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return torch_pickle.read(value)


def _arg(args: types.SimpleNamespace, *names: str, default: Any = _REQUIRED) -> Any:
  for name in names:
    value = getattr(args, name, None)
    if value is not None:
      return value
  if default is _REQUIRED:
    raise ValueError(f"the checkpoint's args have no {names[0]!r}")
  return default


def model_config(args: types.SimpleNamespace, keys: list[str]) -> ModelConfig:
  """The `ModelConfig` of a Megatron run from its ``args`` (SPEC §6.2b) and the state dict's key names."""
  hybrid = any(".mixer." in key for key in keys)
  d_model, num_layers = _arg(args, "hidden_size"), _arg(args, "num_layers")
  heads = _arg(args, "num_attention_heads")
  kv_heads = _arg(args, "num_query_groups") if getattr(args, "group_query_attention", False) else heads
  normalization = _arg(args, "normalization", default="LayerNorm")
  one_p = getattr(args, "apply_layernorm_1p", False)
  if normalization == "RMSNorm":
    if one_p:
      raise ValueError("args: apply_layernorm_1p with normalization 'RMSNorm' is not supported")
    norm = "rmsnorm"
  elif normalization == "LayerNorm":
    norm = "layernorm_1p" if one_p else "layernorm"
  else:
    raise ValueError(f"args.normalization {normalization!r} is not supported; expected 'LayerNorm' or 'RMSNorm'")
  eps = float(_arg(args, "norm_epsilon", "layernorm_epsilon", default=1e-5))
  position = _arg(args, "position_embedding_type", default=None)
  if position is None:
    position = "rope" if getattr(args, "use_rotary_position_embeddings", False) else "learned_absolute"
  if position not in ("rope", "none"):
    raise ValueError(f"args.position_embedding_type {position!r} is not supported; expected 'rope' or 'none'")
  for flag in ("rotary_interleaved", "use_rope_scaling", "openai_gelu", "qk_layernorm",
               "apply_residual_connection_post_layernorm"):
    if getattr(args, flag, False):
      raise ValueError(f"args.{flag}=True is not supported")
  if getattr(args, "num_experts", None):
    raise ValueError(f"args.num_experts={args.num_experts}: mixture-of-experts MLPs are not supported")
  if getattr(args, "rotary_seq_len_interpolation_factor", None) not in (None, 1, 1.0):
    raise ValueError(f"args.rotary_seq_len_interpolation_factor={args.rotary_seq_len_interpolation_factor} is not "
                     f"supported")
  bias = bool(getattr(args, "add_bias_linear", True))
  activation = "swiglu" if getattr(args, "swiglu", False) else (
      "squared_relu" if getattr(args, "squared_relu", False) else "gelu")
  attention = AttentionConfig(
      num_heads=heads, num_kv_heads=kv_heads, head_dim=_arg(args, "kv_channels", default=d_model // heads),
      rotary_fraction=float(_arg(args, "rotary_percent", default=1.0)) if position == "rope" else 0.0,
      rope_theta=float(_arg(args, "rotary_base", default=10000)),
      qkv_bias=bias or bool(getattr(args, "add_qkv_bias", False)), out_bias=bias)
  mlp = MLPConfig(hidden_size=_arg(args, "ffn_hidden_size", default=4 * d_model), activation=activation, bias=bias)
  fields: dict[str, Any] = {}
  if hybrid:
    pattern = _arg(args, "hybrid_layer_pattern", "hybrid_override_pattern", default=None)
    if pattern is None:
      pattern = hybrid_pattern(num_layers, float(_arg(args, "hybrid_attention_ratio", default=0.0)),
                               float(_arg(args, "hybrid_mlp_ratio", default=0.0)))
    if eps != 1e-5:
      raise ValueError(f"args.norm_epsilon={eps}: Megatron's Mamba gated norm uses 1e-5 and ssmjax one eps for all "
                       f"norms")
    fields["mamba2"] = Mamba2Config(
        d_state=_arg(args, "mamba_state_dim", default=128), d_conv=4, expand=2,
        headdim=_arg(args, "mamba_head_dim", default=64), ngroups=_arg(args, "mamba_num_groups", default=8),
        nheads=_arg(args, "mamba_num_heads", default=None), chunk_size=128, dt_limit=(0.0, float("inf")),
        conv_bias=any(k.endswith("mixer.conv1d.bias") for k in keys),
        bias=any(k.endswith("mixer.in_proj.bias") for k in keys))
  else:
    pattern, fields["init_depth"] = "*-" * num_layers, num_layers
  return ModelConfig(vocab_size=_arg(args, "padded_vocab_size"), d_model=d_model, pattern=pattern, mamba_version=2,
                     attention=attention, mlp=mlp, norm=norm, norm_eps=eps,
                     tie_embeddings=not getattr(args, "untie_embeddings_and_output_weights", False),
                     residual_in_fp32=False, init_style="megatron", init_std=float(_arg(args, "init_method_std",
                                                                                          default=0.02)), **fields)


# Parameter names, megatron-core (TE / local spec) vs. the older language_model.encoder ones; the first match wins.
MCORE = types.SimpleNamespace(
    embedding="embedding.word_embeddings.weight", output="output_layer.weight", layer="decoder.layers.{}.",
    final_norm=("decoder.final_norm.", "decoder.final_layernorm."),
    attention_norm=("input_layernorm.", "self_attention.linear_qkv.layer_norm_"),
    mlp_norm=("pre_mlp_layernorm.", "mlp.linear_fc1.layer_norm_"),
    mamba_norm=("norm.", "mixer.in_proj.layer_norm_"),
    qkv="self_attention.linear_qkv.", proj="self_attention.linear_proj.", fc1="mlp.linear_fc1.",
    fc2="mlp.linear_fc2.")
LEGACY = types.SimpleNamespace(
    embedding="language_model.embedding.word_embeddings.weight", output="language_model.output_layer.weight",
    layer="language_model.encoder.layers.{}.",
    final_norm=("language_model.encoder.final_norm.", "language_model.encoder.final_layernorm."),
    attention_norm=("input_norm.", "input_layernorm."), mlp_norm=("post_attention_norm.", "post_attention_layernorm."),
    mamba_norm=("norm.",), qkv="self_attention.query_key_value.", proj="self_attention.dense.",
    fc1="mlp.dense_h_to_4h.", fc2="mlp.dense_4h_to_h.")


class _Converter:
  """Reads one Megatron model's sub-blocks from a `ShardedSource` into ssmjax parameter sub-trees."""

  def __init__(self, config: ModelConfig, source: ShardedSource, names: types.SimpleNamespace):
    self.config, self.src, self.names = config, source, names
    self.tp = source.tp

  def _norm(self, candidates: tuple[str, ...], prefix: str = "") -> dict:
    for candidate in candidates:
      if prefix + candidate + "weight" in self.src:
        out = {"scale": self.src.take(prefix + candidate + "weight")}
        if self.config.norm != "rmsnorm":
          out["bias"] = self.src.take(prefix + candidate + "bias")
        return out
    names = [prefix + candidate + "weight" for candidate in candidates]
    raise KeyError(f"tensor {names[0]!r} (or {names[1:]}) is missing from the {self.src.description}")

  def attention(self, prefix: str) -> dict:
    a, d = self.config.attention, self.config.d_model
    heads, groups, head_dim = a.num_heads, a.resolved_kv_heads(), a.resolved_head_dim(d)
    per_group = heads // groups + 2

    def ungroup(fused: np.ndarray, name: str) -> list[np.ndarray]:
      if fused.shape[0] != groups * per_group * head_dim:
        raise ValueError(f"{name} has {fused.shape[0]} rows, expected {groups * per_group * head_dim} = query groups "
                         f"{groups} x (heads per group {heads // groups} + 2) x head dim {head_dim}")
      grouped = fused.reshape(groups, per_group, head_dim, *fused.shape[1:])
      q = grouped[:, :-2].reshape(heads * head_dim, *fused.shape[1:])
      return [q, grouped[:, -2].reshape(groups * head_dim, *fused.shape[1:]),
              grouped[:, -1].reshape(groups * head_dim, *fused.shape[1:])]

    qkv = prefix + self.names.qkv
    pieces = {"weight": ungroup(self.src.take(qkv + "weight", "rows"), qkv + "weight")}
    if a.qkv_bias:
      pieces["bias"] = ungroup(self.src.take(qkv + "bias", "rows"), qkv + "bias")
    proj = prefix + self.names.proj

    def get(name: str) -> np.ndarray:
      which, kind = name.split(".")
      if which == "o":
        return self.src.take(proj + kind, "cols" if kind == "weight" else "replicated")
      return pieces[kind]["qkv".index(which)]

    out = layouts.attention(get, num_heads=heads, num_kv_heads=groups, head_dim=head_dim, qkv_bias=a.qkv_bias,
                            out_bias=a.out_bias, names=("q", "k", "v", "o"))
    return {"norm": self._norm(self.names.attention_norm, prefix), "attention": out}

  def mlp(self, prefix: str) -> dict:
    fc1, fc2, m = prefix + self.names.fc1, prefix + self.names.fc2, self.config.mlp
    out = {"fc2": layouts.linear(self.src.take(fc2 + "weight", "cols"))}
    if m.activation == "swiglu":  # each rank's fc1 is [gate_r, up_r]
      halves = [layouts.split_rows(s, 2, fc1 + "weight") for s in self.src.shards(fc1 + "weight")]
      out["gate"] = layouts.linear(np.concatenate([g for g, _ in halves]))
      out["fc1"] = layouts.linear(np.concatenate([u for _, u in halves]))
    else:
      out["fc1"] = layouts.linear(self.src.take(fc1 + "weight", "rows"))
    if m.bias:
      if m.activation == "swiglu":
        halves = [layouts.split_rows(s, 2, fc1 + "bias") for s in self.src.shards(fc1 + "bias")]
        out["gate_bias"] = np.concatenate([g for g, _ in halves])
        out["fc1_bias"] = np.concatenate([u for _, u in halves])
      else:
        out["fc1_bias"] = self.src.take(fc1 + "bias", "rows")
      out["fc2_bias"] = self.src.take(fc2 + "bias")
    return {"norm": self._norm(self.names.mlp_norm, prefix), "mlp": out}

  def mamba(self, prefix: str) -> dict:
    m, d, tp = self.config.mamba2, self.config.d_model, self.tp
    heads, groups = m.resolved_nheads(d), m.ngroups
    if groups % tp or heads % tp:
      raise ValueError(f"tensor-parallel size {tp} must divide the Mamba groups ({groups}) and heads ({heads})")
    local = dict(d_inner=m.d_inner(d) // tp, ngroups=groups // tp, d_state=m.d_state, nheads=heads // tp)
    mixer = prefix + "mixer."

    def group_major(name: str, kind: str, transform) -> np.ndarray:
      # Each rank's slice is [z_r, x_r, B_r, C_r, dt_r] (conv: [x_r, B_r, C_r]): re-lay out per rank, stack groups.
      return np.concatenate([to_group_major(transform(s), kind, **local) for s in self.src.shards(mixer + name)],
                            axis=-2)

    out = {
        "in_proj": group_major("in_proj.weight", "in_proj", layouts.linear),
        "conv1d": {"kernel": group_major("conv1d.weight", "conv", layouts.conv)},
        "dt_bias": self.src.take(mixer + "dt_bias", "rows"),
        "A_log": self.src.take(mixer + "A_log", "rows"),
        "D": self.src.take(mixer + "D", "rows"),
        "norm": {"scale": self.src.take(mixer + "norm.weight", "rows")},
        "out_proj": layouts.linear(self.src.take(mixer + "out_proj.weight", "cols")),
    }
    if m.conv_bias:
      out["conv1d"]["bias"] = group_major("conv1d.bias", "conv", lambda b: b)
    if m.bias:
      out["in_proj_bias"] = group_major("in_proj.bias", "in_proj", lambda b: b)
      out["out_proj_bias"] = self.src.take(mixer + "out_proj.bias")
    return {"norm": self._norm(self.names.mamba_norm, prefix), "mixer": out}

  def final_norm(self) -> dict:
    return self._norm(self.names.final_norm)

  def plan(self) -> Plan:
    cfg, names = self.config, self.names
    plan: Plan = [("embed", lambda: {"embedding": self.src.take(names.embedding, "rows")})]
    for i, kind in enumerate(cfg.pattern):
      # GPT layer j holds attention and MLP (sub-blocks 2j, 2j+1); a hybrid layer i is sub-block i.
      prefix = names.layer.format(i if "M" in cfg.pattern else i // 2)
      make = {"M": self.mamba, "*": self.attention, "-": self.mlp}[kind]
      plan.append((f"layers_{i}", functools.partial(make, prefix)))
    plan.append(("final_norm", self.final_norm))
    if not cfg.tie_embeddings:
      plan.append(("lm_head", lambda: layouts.linear(self.src.take(names.output, "rows"))))
    elif names.output in self.src:
      self.src.skip(names.output)
    return plan


def _load_rank(file: str) -> tuple[types.SimpleNamespace, dict[str, Any], dict]:
  checkpoint = torch_pickle.load(file)
  if not isinstance(checkpoint, dict):
    raise ValueError(f"{file} holds a {type(checkpoint).__name__}, expected Megatron's checkpoint dict")
  for key in ("args", "model"):
    if key not in checkpoint:
      extra = " (virtual pipeline stages 'model0', 'model1', ... are not supported)" if "model0" in checkpoint else ""
      raise ValueError(f"{file} has no {key!r} entry{extra}; keys: {sorted(checkpoint)}")
  version = checkpoint.get("checkpoint_version", 0)
  if float(version) < 2.0:
    raise ValueError(f"{file}: checkpoint_version {version} (QKV layouts before 2.0) is not supported")
  state = {k: v for k, v in torch_pickle.flatten_state_dict(checkpoint["model"]).items()}
  return checkpoint["args"], state, {"iteration": checkpoint.get("iteration"), "checkpoint_version": version}


def open_megatron(path: str) -> Conversion:
  """Open a Megatron checkpoint (root, iteration directory or rank file) for conversion; ranks are merged."""
  files = find_rank_files(path)
  loaded = [_load_rank(file) for file in files]
  args = loaded[0][0]
  tp = int(getattr(args, "tensor_model_parallel_size", 1) or 1)
  if tp != len(files):
    raise ValueError(f"args.tensor_model_parallel_size is {tp} but {len(files)} rank file(s) were found: {files}")
  pp = int(getattr(args, "pipeline_model_parallel_size", 1) or 1)
  if pp != 1:
    raise ValueError(f"args.pipeline_model_parallel_size is {pp}; only 1 is supported")
  source = ShardedSource([state for _, state, _ in loaded], files)
  for key in source.keys():
    if key.endswith(IGNORED_SUFFIXES):
      source.skip(key)
  keys = [k for k in source.keys() if not k.endswith(IGNORED_SUFFIXES)]
  config = model_config(args, keys)
  names = LEGACY if any(k.startswith("language_model.") for k in keys) else MCORE
  info = {"format": "megatron", **loaded[0][2], "tensor_parallel": tp,
          "tokenizer_model": getattr(args, "tokenizer_model", None)}
  return Conversion(config, source, _Converter(config, source, names).plan(), info)
