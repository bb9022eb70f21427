"""Model configuration: frozen dataclasses, layer patterns and the hybrid allocation.

A model is a stack of pre-norm residual sub-blocks described by a *pattern* string in Megatron's symbols:

  ``M``  a Mamba mixer (Mamba-1 or Mamba-2, chosen by ``ModelConfig.mamba_version``)
  ``*``  self-attention
  ``-``  an MLP

``"M-M*-"`` is five sub-blocks. A state-spaces / HF "layer" of mixer plus gated MLP is two sub-blocks (``"M-"``), and a
Llama decoder layer is ``"*-"``; `state_spaces_pattern` builds such patterns from the state-spaces config fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

MAMBA, ATTENTION, MLP = "M", "*", "-"
LAYER_SYMBOLS = (MAMBA, ATTENTION, MLP)
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")

NormKind = Literal["rmsnorm", "layernorm", "layernorm_1p"]
InitStyle = Literal["megatron", "mamba_ssm"]
Activation = Literal["gelu", "squared_relu", "swiglu"]


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class Mamba1Config:
  """Mamba-1 mixer settings (mamba_ssm ``Mamba`` defaults)."""

  d_state: int = 16
  d_conv: int = 4
  expand: int = 2
  dt_rank: int | None = None  # None: ceil(d_model / 16), as mamba_ssm's "auto".
  dt_min: float = 0.001
  dt_max: float = 0.1
  dt_init_floor: float = 1e-4
  dt_scale: float = 1.0
  conv_bias: bool = True
  bias: bool = False  # in_proj / out_proj bias.
  implementation: str | None = None  # pallas_kernels.selective_scan implementation; None: best for the backend.

  def d_inner(self, d_model: int) -> int:
    return self.expand * d_model

  def resolved_dt_rank(self, d_model: int) -> int:
    return self.dt_rank if self.dt_rank is not None else math.ceil(d_model / 16)


@dataclasses.dataclass(frozen=True)
class Mamba2Config:
  """Mamba-2 mixer settings. Defaults are mamba_ssm's ``Mamba2``; Megatron's 8B models use ngroups=8, chunk 128."""

  d_state: int = 128
  d_conv: int = 4
  expand: int = 2
  headdim: int = 64
  ngroups: int = 1
  nheads: int | None = None  # None: expand * d_model // headdim. NemotronH sets heads directly.
  chunk_size: int = 256
  norm_group_size: int | None = None  # gated RMSNorm group size; None: d_inner // ngroups.
  dt_min: float = 0.001
  dt_max: float = 0.1
  dt_init_floor: float = 1e-4
  dt_limit: tuple[float, float] = (0.0, float("inf"))  # clamp of softplus(dt + dt_bias); (0, inf) = none.
  A_init_range: tuple[float, float] = (1.0, 16.0)
  conv_bias: bool = True
  bias: bool = False  # in_proj / out_proj bias.
  implementation: str | None = None  # pallas_kernels.ssd implementation; None: best for the backend.

  def resolved_nheads(self, d_model: int) -> int:
    return self.nheads if self.nheads is not None else self.expand * d_model // self.headdim

  def d_inner(self, d_model: int) -> int:
    return self.resolved_nheads(d_model) * self.headdim

  def conv_dim(self, d_model: int) -> int:
    return self.d_inner(d_model) + 2 * self.ngroups * self.d_state

  def resolved_norm_group_size(self, d_model: int) -> int:
    return self.norm_group_size if self.norm_group_size is not None else self.d_inner(d_model) // self.ngroups


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Causal self-attention (MHA or GQA), with RoPE on a fraction of each head or no position encoding."""

  num_heads: int = 32
  num_kv_heads: int | None = None  # None: num_heads (MHA).
  head_dim: int | None = None  # None: d_model // num_heads.
  rotary_fraction: float = 0.0  # 0: no position encoding (NoPE, the hybrid); 1: Llama; 0.5: the 8B Transformer.
  rope_theta: float = 10000.0
  qkv_bias: bool = False
  out_bias: bool = False
  # Width K of a causal depthwise conv (with bias, no activation) over the q, k and v projections before RoPE, as
  # mamba_ssm's MHA with attn_cfg d_conv > 0 (``mamba2attn-2.7b``); 0: no conv.
  d_conv: int = 0
  implementation: Literal["xla", "reference"] = "xla"  # jax.nn.dot_product_attention, or naive softmax(QK^T)V.

  def resolved_kv_heads(self) -> int:
    return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

  def resolved_head_dim(self, d_model: int) -> int:
    return self.head_dim if self.head_dim is not None else d_model // self.num_heads

  def rotary_dim(self, d_model: int) -> int:
    return int(round(self.resolved_head_dim(d_model) * self.rotary_fraction))

  def qkv_dim(self, d_model: int) -> int:
    """Channels of q, k and v together: (H + 2 KV) * head_dim (the q|k|v conv's channels)."""
    return (self.num_heads + 2 * self.resolved_kv_heads()) * self.resolved_head_dim(d_model)


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  """Position-wise MLP: fc2(act(fc1 x)), or fc2(fc1 x * silu(gate x)) for ``swiglu``."""

  hidden_size: int = 16384
  activation: Activation = "gelu"  # gelu is exact (erf), as Megatron's F.gelu.
  bias: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A whole language model: embedding, the sub-blocks of ``pattern``, final norm, output layer."""

  vocab_size: int
  d_model: int
  pattern: str
  mamba_version: int = 2
  mamba1: Mamba1Config = Mamba1Config()
  mamba2: Mamba2Config = Mamba2Config()
  attention: AttentionConfig = AttentionConfig()
  mlp: MLPConfig = MLPConfig()
  norm: NormKind = "rmsnorm"
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  residual_in_fp32: bool = False
  init_style: InitStyle = "megatron"
  init_std: float = 0.02
  # Depth L of the scaled output-projection inits (std / sqrt(L) or / sqrt(2 L)); None: the number of sub-blocks.
  # Megatron's GPT counts attention + MLP as one layer, so its 8B Transformer uses 32 for 64 sub-blocks.
  init_depth: int | None = None
  dtype: str = "float32"  # compute dtype of activations and matmuls.
  param_dtype: str = "float32"
  # Rematerialisation of each residual sub-block in the backward pass: "none", "full" (save nothing), "dots" (save
  # matmul outputs) or "dots_no_batch" (save matmul outputs without batch dimensions, i.e. weight-only products).
  remat_policy: str = "none"

  def __post_init__(self):
    validate_pattern(self.pattern)
    _check(self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}")
    _check(self.d_model > 0, f"d_model must be positive, got {self.d_model}")
    _check(self.mamba_version in (1, 2), f"mamba_version must be 1 or 2, got {self.mamba_version!r}")
    _check(self.norm in ("rmsnorm", "layernorm", "layernorm_1p"),
           f"norm must be 'rmsnorm', 'layernorm' or 'layernorm_1p', got {self.norm!r}")
    _check(self.init_style in ("megatron", "mamba_ssm"),
           f"init_style must be 'megatron' or 'mamba_ssm', got {self.init_style!r}")
    _check(self.remat_policy in REMAT_POLICIES,
           f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    if MAMBA in self.pattern and self.mamba_version == 2:
      m, d = self.mamba2, self.d_model
      _check(m.nheads is not None or (m.expand * d) % m.headdim == 0,
             f"mamba2.headdim ({m.headdim}) must divide expand * d_model ({m.expand * d})")
      h = m.resolved_nheads(d)
      _check(h % m.ngroups == 0, f"mamba2.ngroups ({m.ngroups}) must divide the number of heads ({h})")
      _check(m.d_inner(d) % m.resolved_norm_group_size(d) == 0,
             f"mamba2.norm_group_size ({m.norm_group_size}) must divide d_inner ({m.d_inner(d)})")
      _check(m.chunk_size > 0, f"mamba2.chunk_size must be positive, got {m.chunk_size}")
    if ATTENTION in self.pattern:
      a = self.attention
      kv = a.resolved_kv_heads()
      _check(a.num_heads % kv == 0, f"attention.num_kv_heads ({kv}) must divide attention.num_heads ({a.num_heads})")
      _check(a.head_dim is not None or self.d_model % a.num_heads == 0,
             f"attention.num_heads ({a.num_heads}) must divide d_model ({self.d_model}) unless head_dim is set")
      _check(0.0 <= a.rotary_fraction <= 1.0 and self.attention.rotary_dim(self.d_model) % 2 == 0,
             f"attention.rotary_fraction ({a.rotary_fraction}) must give an even rotary dim in [0, head_dim]")
      _check(isinstance(a.d_conv, int) and a.d_conv >= 0,
             f"attention.d_conv must be a non-negative integer (0: no q|k|v conv), got {a.d_conv!r}")
    if MLP in self.pattern:
      _check(self.mlp.activation in ("gelu", "squared_relu", "swiglu"),
             f"mlp.activation must be 'gelu', 'squared_relu' or 'swiglu', got {self.mlp.activation!r}")

  @property
  def num_layers(self) -> int:
    """Number of sub-blocks (Megatron counts each symbol as a layer)."""
    return len(self.pattern)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def validate_pattern(pattern: str) -> str:
  if not isinstance(pattern, str) or not pattern:
    raise ValueError(f"pattern must be a non-empty string of {LAYER_SYMBOLS}, got {pattern!r}")
  bad = sorted(set(pattern) - set(LAYER_SYMBOLS))
  if bad:
    raise ValueError(f"pattern has unknown layer symbols {bad}; expected only 'M' (Mamba), '*' (attention), "
                     f"'-' (MLP): {pattern!r}")
  return pattern


def _running_budget_walk(num_slots: int, count: int, section: float) -> list[bool]:
  """Megatron's even spacing: which of ``num_slots`` slots take one of ``count`` items (SPEC §1.4).

  The budget starts at one ``section`` length; a slot whose budget is below 0.5 takes an item and the budget grows by
  a section length, otherwise the budget shrinks by one.
  """
  chosen = [False] * num_slots
  if count <= 0:
    return chosen
  budget = section
  for i in range(num_slots):
    if budget < 0.5:
      chosen[i] = True
      budget += section
    else:
      budget -= 1
  return chosen


def hybrid_pattern(num_layers: int, attention_ratio: float, mlp_ratio: float) -> str:
  """Megatron's automatic hybrid allocation (``--hybrid-attention-ratio``, ``--hybrid-mlp-ratio``).

  ``hybrid_pattern(56, 0.08, 0.5)`` is the released 8B Mamba-2-Hybrid pattern.
  """
  if num_layers <= 0:
    raise ValueError(f"num_layers must be positive, got {num_layers}")
  for name, ratio in (("attention_ratio", attention_ratio), ("mlp_ratio", mlp_ratio)):
    if not 0.0 <= ratio <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {ratio}")
  if attention_ratio + mlp_ratio > 1.0:
    raise ValueError(f"attention_ratio + mlp_ratio must be <= 1, got {attention_ratio} + {mlp_ratio}")
  layers = [MAMBA] * num_layers
  n_attention = round(num_layers * attention_ratio)
  n_mlp = round(num_layers * mlp_ratio)
  # Attention: n_attention + 1 Mamba sections, so the stack starts and ends with Mamba.
  attention_section = (num_layers - n_attention) / (n_attention + 1)
  for i, is_attention in enumerate(_running_budget_walk(num_layers, n_attention, attention_section)):
    if is_attention:
      layers[i] = ATTENTION
  # MLP: spread over the remaining Mamba slots, one section of (Mamba left / MLP count) per MLP.
  mamba_slots = [i for i, kind in enumerate(layers) if kind == MAMBA]
  mlp_section = (len(mamba_slots) - n_mlp) / n_mlp if n_mlp else 0.0
  for slot, is_mlp in zip(mamba_slots, _running_budget_walk(len(mamba_slots), n_mlp, mlp_section)):
    if is_mlp:
      layers[slot] = MLP
  return "".join(layers)


def state_spaces_pattern(n_layer: int, attn_layer_idx: tuple[int, ...] = (), mlp: bool = False) -> str:
  """The pattern of a state-spaces / HF model: per layer a mixer (attention at ``attn_layer_idx``), plus an MLP."""
  if n_layer <= 0:
    raise ValueError(f"n_layer must be positive, got {n_layer}")
  bad = [i for i in attn_layer_idx if not 0 <= i < n_layer]
  if bad:
    raise ValueError(f"attn_layer_idx entries must be in [0, {n_layer}), got {bad}")
  per_layer = [(ATTENTION if i in attn_layer_idx else MAMBA) + (MLP if mlp else "") for i in range(n_layer)]
  return "".join(per_layer)
