"""Causal self-attention: MHA or GQA, RoPE on a fraction of each head (or none), separate q/k/v/o projections.

Shapes: x (B, T, D); q (B, T, H, K); k, v (B, T, KV, K) with H a multiple of KV; head h reads kv head h // (H / KV).
Megatron's fused QKV and HF's q_proj/k_proj/v_proj both convert to the separate ``q_proj``, ``k_proj``, ``v_proj``
kernels here, which shard over heads.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.config import AttentionConfig
from ssmjax.layers.params import Inits, param
from ssmjax.layers.rope import apply_rope


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Naive causal softmax(q k^T / sqrt(K)) v in float32, kv heads repeated for GQA: the oracle."""
  groups = q.shape[2] // k.shape[2]
  k = jnp.repeat(k, groups, axis=2).astype(jnp.float32)
  v = jnp.repeat(v, groups, axis=2).astype(jnp.float32)
  scores = jnp.einsum("bqhk,bshk->bhqs", q.astype(jnp.float32), k) / jnp.sqrt(jnp.float32(q.shape[-1]))
  length = q.shape[1]
  causal = jnp.tril(jnp.ones((length, length), dtype=bool))
  scores = jnp.where(causal, scores, -jnp.inf)
  return jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(scores, axis=-1), v).astype(q.dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "xla") -> jax.Array:
  """Causal attention with GQA. ``"xla"``: ``jax.nn.dot_product_attention``; ``"reference"``: the naive oracle."""
  if implementation == "reference":
    return attention_reference(q, k, v)
  if implementation == "xla":
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)
  raise ValueError(f"attention implementation must be 'xla' or 'reference', got {implementation!r}")


class Attention(nn.Module):
  config: AttentionConfig
  inits: Inits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    batch, length, d_model = x.shape
    cfg = self.config
    heads, kv_heads, head_dim = cfg.num_heads, cfg.resolved_kv_heads(), cfg.resolved_head_dim(d_model)
    x = x.astype(self.dtype)

    def project(name, n_heads, axis):
      kernel = param(self, name, self.inits.dense(d_model), (d_model, n_heads, head_dim), ("embed", axis, "head_dim"),
                     self.param_dtype)
      y = jnp.einsum("btd,dhk->bthk", x, kernel.astype(self.dtype))
      if cfg.qkv_bias:
        y = y + param(self, name + "_bias", nn.initializers.zeros, (n_heads, head_dim), (axis, "head_dim"),
                      self.param_dtype).astype(self.dtype)
      return y

    q, k, v = project("q_proj", heads, "heads"), project("k_proj", kv_heads, "kv_heads"), project(
        "v_proj", kv_heads, "kv_heads")
    if positions is None:
      positions = jnp.arange(length)
    rotary_dim = cfg.rotary_dim(d_model)
    q = apply_rope(q, positions, rotary_dim, cfg.rope_theta)
    k = apply_rope(k, positions, rotary_dim, cfg.rope_theta)
    out = causal_attention(q, k, v, cfg.implementation)
    o_proj = param(self, "o_proj", self.inits.residual_out(heads * head_dim, mamba=False), (heads, head_dim, d_model),
                   ("heads", "head_dim", "embed"), self.param_dtype)
    y = jnp.einsum("bthk,hkd->btd", out.astype(self.dtype), o_proj.astype(self.dtype))
    if cfg.out_bias:
      y = y + param(self, "o_proj_bias", nn.initializers.zeros, (d_model,), ("embed",),
                    self.param_dtype).astype(self.dtype)
    return y
