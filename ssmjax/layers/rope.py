"""Rotary position embeddings (RoPE), non-interleaved ("rotate half"), on the first ``rotary_dim`` dims of a head.

Dimension i of the rotated part is paired with i + rotary_dim/2, as in Megatron and HF Llama. The inverse frequencies
are theta^(-2j / rotary_dim), j = 0 .. rotary_dim/2 - 1; the remaining head dims pass through unchanged (Megatron's
``--rotary-percent``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, rotary_dim: int, theta: float) -> jax.Array:
  """positions (..., T) -> angles (..., T, rotary_dim / 2) in float32."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, rotary_dim: int, theta: float) -> jax.Array:
  """x (B, T, heads, head_dim), positions (B, T) or (T,) -> x with its first ``rotary_dim`` dims rotated."""
  if rotary_dim == 0:
    return x
  if rotary_dim % 2 or rotary_dim > x.shape[-1]:
    raise ValueError(f"rotary_dim must be even and <= head_dim ({x.shape[-1]}), got {rotary_dim}")
  angles = rope_angles(jnp.broadcast_to(positions, x.shape[:2]), rotary_dim, theta)[:, :, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  rotated, passthrough = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
  first, second = jnp.split(rotated, 2, axis=-1)
  out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).astype(x.dtype)
  return jnp.concatenate([out, passthrough], axis=-1)
