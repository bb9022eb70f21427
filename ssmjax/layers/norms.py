"""Normalisation layers: RMSNorm, LayerNorm (optionally Megatron's zero-centred "layernorm-1p"), gated grouped RMSNorm.

All of them compute in float32 and return the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.layers.params import param


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale."""

  eps: float = 1e-5
  axis_name: str = "embed"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,), self.param_dtype)
    return (rms_normalize(x, self.eps) * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
  """y = (x - mean) / sqrt(var + eps) * gain + bias, with gain = 1 + scale when ``zero_centered_gain`` (layernorm-1p)."""

  eps: float = 1e-5
  zero_centered_gain: bool = False
  axis_name: str = "embed"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale_init = nn.initializers.zeros if self.zero_centered_gain else nn.initializers.ones
    scale = param(self, "scale", scale_init, (features,), (self.axis_name,), self.param_dtype)
    bias = param(self, "bias", nn.initializers.zeros, (features,), (self.axis_name,), self.param_dtype)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    gain = scale.astype(jnp.float32) + (1.0 if self.zero_centered_gain else 0.0)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * gain + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class GatedRMSNorm(nn.Module):
  """Mamba-2's output norm: gate first, y = x * silu(z), then RMSNorm over contiguous groups of ``group_size``.

  This is mamba_ssm's ``RMSNormGated(norm_before_gate=False)``; with ``group_size = d_inner // ngroups`` it is the
  grouped norm of Megatron's 8B models, with ``group_size = d_inner`` the ungrouped norm.
  """

  group_size: int
  eps: float = 1e-5
  axis_name: str = "ssm_inner"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
    features = x.shape[-1]
    if features % self.group_size:
      raise ValueError(f"group_size ({self.group_size}) must divide the feature size ({features})")
    scale = param(self, "scale", nn.initializers.ones, (features,), (self.axis_name,), self.param_dtype)
    gated = x.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    grouped = gated.reshape(*x.shape[:-1], features // self.group_size, self.group_size)
    y = rms_normalize(grouped, self.eps).reshape(x.shape)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def make_norm(kind: str, eps: float, dtype, param_dtype, name: str | None = None) -> nn.Module:
  """The pre-norm / final norm a `ModelConfig.norm` names."""
  if kind == "rmsnorm":
    return RMSNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind in ("layernorm", "layernorm_1p"):
    return LayerNorm(eps=eps, zero_centered_gain=kind == "layernorm_1p", dtype=dtype, param_dtype=param_dtype,
                     name=name)
  raise ValueError(f"norm must be 'rmsnorm', 'layernorm' or 'layernorm_1p', got {kind!r}")
