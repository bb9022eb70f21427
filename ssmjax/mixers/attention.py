"""Causal self-attention: MHA or GQA, RoPE on a fraction of each head (or none), separate q/k/v/o projections.

Shapes: x (B, T, D); q (B, T, H, K); k, v (B, T, KV, K) with H a multiple of KV; head h reads kv head h // (H / KV).
Megatron's fused QKV and HF's q_proj/k_proj/v_proj both convert to the separate ``q_proj``, ``k_proj``, ``v_proj``
kernels here, which shard over heads.

With ``d_conv`` = W > 0 (mamba_ssm's ``MHA(d_conv=W)``, used by ``mamba2attn-2.7b``) the projections pass through a
causal depthwise conv of width W with bias and no activation, before RoPE: mamba_ssm runs one conv over the fused
q|k|v channels, which is the same as one conv per projection, so here ``q_conv1d``, ``k_conv1d``, ``v_conv1d`` have
kernels (W, H or KV, K) that shard over heads like the projections. Decoding keeps their last W inputs in a
`ConvKVCache` (one (B, qkv channels, W) array, ``[q, k, v]`` as mamba_ssm's conv state).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssmjax import context_parallel
from ssmjax.cache import ConvKVCache, Cursor, KVCache
from ssmjax.config import AttentionConfig
from ssmjax.layers.conv import CausalConv1d
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


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: KVCache, cursor: Cursor) -> jax.Array:
  """Queries of the next T tokens over the cached keys plus their own; causal, blind to left padding; fp32 softmax.

  q (B, T, H, K); k, v (B, T, KV, K) the new tokens' keys and values; ``cache`` (B, KV, S, K) holds the earlier tokens
  at slots < ``cursor.index`` (later slots are ignored). Query t (slot i_t) sees slot s iff ``offsets[b] <= s <= i_t``.
  A padded query sees nothing; its (unused) output is finite, not NaN, because masked scores are a large negative
  number rather than -inf.

  The cache is read as it was before this call and the caller writes the new keys into it afterwards, so the write
  updates the buffer in place (reading the updated buffer instead made XLA:CPU duplicate the update and copy the
  cache). The queries of a KV group are one (T * H/KV) block, so all products are plain batched matmuls over (B, KV).
  """
  batch, length, heads, head_dim = q.shape
  kv_heads, slots = cache.k.shape[1], cache.k.shape[2]
  per_group = heads // kv_heads

  def grouped(a):  # (B, T, n, K) -> (B, KV, T * n / KV, K)
    n = a.shape[2] // kv_heads
    return a.reshape(batch, length, kv_heads, n, head_dim).transpose(0, 2, 1, 3, 4).reshape(
        batch, kv_heads, length * n, head_dim)

  q_bgqk = grouped(q).astype(cache.k.dtype)
  k_new, v_new = grouped(k).astype(cache.k.dtype), grouped(v).astype(cache.v.dtype)
  scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
  scores_cached = jnp.einsum("bgqk,bgsk->bgqs", q_bgqk, cache.k, preferred_element_type=jnp.float32) * scale
  scores_new = jnp.einsum("bgqk,bgsk->bgqs", q_bgqk, k_new, preferred_element_type=jnp.float32) * scale
  slot = jnp.arange(slots, dtype=jnp.int32)
  cached_visible_bs = (slot[None, :] >= cursor.offsets[:, None]) & (slot[None, :] < cursor.index)
  new_slots = cursor.slots(length)
  new_visible_bts = ((new_slots[None, None, :] >= cursor.offsets[:, None, None])
                     & (new_slots[None, None, :] <= new_slots[None, :, None]))
  new_visible_bqs = jnp.repeat(new_visible_bts, per_group, axis=1)  # query row t * per_group + r
  masked = jnp.finfo(jnp.float32).min
  scores = jnp.concatenate([jnp.where(cached_visible_bs[:, None, None, :], scores_cached, masked),
                            jnp.where(new_visible_bqs[:, None], scores_new, masked)], axis=-1)
  probs = jax.nn.softmax(scores, axis=-1)
  out = (jnp.einsum("bgqs,bgsk->bgqk", probs[..., :slots].astype(cache.v.dtype), cache.v,
                    preferred_element_type=jnp.float32)
         + jnp.einsum("bgqs,bgsk->bgqk", probs[..., slots:].astype(v_new.dtype), v_new,
                      preferred_element_type=jnp.float32))
  out = out.reshape(batch, kv_heads, length, per_group, head_dim).transpose(0, 2, 1, 3, 4)
  return out.reshape(batch, length, heads, head_dim).astype(q.dtype)


class Attention(nn.Module):
  config: AttentionConfig
  inits: Inits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array | None = None, *, cache: KVCache | None = None,
               cursor: Cursor | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """x (B, T, D) -> y; with ``cache`` and ``cursor``, x are the next T tokens -> (y, the cache with them)."""
    batch, length, d_model = x.shape
    if (cache is None) != (cursor is None):
      raise ValueError("Attention: pass both cache and cursor (decoding) or neither (a whole sequence)")
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
    conv_state = None
    if cfg.d_conv:
      (q, k, v), conv_state = self._qkv_conv((q, k, v), cache, cursor)
    if cursor is not None:
      positions = cursor.positions(length)
    elif positions is None:
      positions = jnp.arange(length)
    rotary_dim = cfg.rotary_dim(d_model)
    q = apply_rope(q, positions, rotary_dim, cfg.rope_theta)
    k = apply_rope(k, positions, rotary_dim, cfg.rope_theta)
    layout = context_parallel.context_layout(length) if cache is None else None
    if layout is not None:  # the sequence split over devices: ring attention
      out = context_parallel.causal_attention(q, k, v, layout)
    elif cache is None:
      out = causal_attention(q, k, v, cfg.implementation)
    else:
      out = cached_attention(q, k, v, cache, cursor)
      start = (0, 0, cursor.index, 0)  # the cache is head-major: (B, KV, S, K)
      new_k = jax.lax.dynamic_update_slice(cache.k, k.transpose(0, 2, 1, 3).astype(cache.k.dtype), start)
      new_v = jax.lax.dynamic_update_slice(cache.v, v.transpose(0, 2, 1, 3).astype(cache.v.dtype), start)
      cache = KVCache(k=new_k, v=new_v) if conv_state is None else ConvKVCache(k=new_k, v=new_v, conv=conv_state)
    o_proj = param(self, "o_proj", self.inits.residual_out(heads * head_dim, mamba=False), (heads, head_dim, d_model),
                   ("heads", "head_dim", "embed"), self.param_dtype)
    y = jnp.einsum("bthk,hkd->btd", out.astype(self.dtype), o_proj.astype(self.dtype))
    if cfg.out_bias:
      y = y + param(self, "o_proj_bias", nn.initializers.zeros, (d_model,), ("embed",),
                    self.param_dtype).astype(self.dtype)
    return y if cache is None else (y, cache)

  def _qkv_conv(self, qkv: tuple[jax.Array, ...], cache: KVCache | None,
                cursor: Cursor | None) -> tuple[tuple[jax.Array, ...], jax.Array | None]:
    """The causal conv over q (B, T, H, K), k and v (B, T, KV, K) -> (the three convolved, the new conv state or None).

    Decoding continues from ``cache.conv`` (B, (H + 2 KV) * K, W); the inputs at left-padded slots are zeroed first,
    so a sequence's conv window is that of its unpadded prompt (as in the Mamba mixers).
    """
    width = self.config.d_conv
    names, axes = ("q_conv1d", "k_conv1d", "v_conv1d"), ("heads", "kv_heads", "kv_heads")
    convs = [CausalConv1d(width, (axis, "head_dim"), use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                          name=name) for name, axis in zip(names, axes)]
    if cache is None:
      return tuple(conv(y) for conv, y in zip(convs, qkv)), None
    if not isinstance(cache, ConvKVCache):
      raise TypeError(f"Attention with d_conv={width} needs a ConvKVCache (init_cache makes one), "
                      f"got {type(cache).__name__}")
    batch, length = qkv[0].shape[:2]
    sizes = [y.shape[2] * y.shape[3] for y in qkv]
    expected = (batch, sum(sizes), width)
    if cache.conv.shape != expected:
      raise ValueError(f"cache.conv must have shape (batch, qkv channels, d_conv) = {expected}, got {cache.conv.shape}")
    valid_bt = cursor.valid(length)[:, :, None, None]
    states = jnp.split(cache.conv, np.cumsum(sizes)[:-1].tolist(), axis=1)
    outputs, new_states = [], []
    for conv, y, state in zip(convs, qkv, states):
      out, new_state = conv(jnp.where(valid_bt, y, 0), state=state.reshape(batch, *y.shape[2:], width))
      outputs.append(out)
      new_states.append(new_state.reshape(batch, -1, width))
    return tuple(outputs), jnp.concatenate(new_states, axis=1)

  def prefill(self, x: jax.Array, cache: KVCache, cursor: Cursor) -> tuple[jax.Array, KVCache]:
    """x (B, T, D) after the tokens already in ``cache`` -> (y (B, T, D), the cache with them)."""
    return self(x, cache=cache, cursor=cursor)

  def step(self, x: jax.Array, cache: KVCache, cursor: Cursor) -> tuple[jax.Array, KVCache]:
    """One token: x (B, D) -> (y (B, D), the new cache)."""
    y, cache = self(x[:, None], cache=cache, cursor=cursor)
    return y[:, 0], cache
