"""The Mamba-1 mixer (SPEC §4.5): in_proj to [x, z], causal conv on x, input-dependent dt/B/C, selective scan, z gate.

Decoding (SPEC §5.4): a `Mamba1State` cache, prefill through the scan from the cached state, `selective_step`.

Notation: B batch, T length, D d_model, E d_inner, N d_state, R dt_rank, K conv width. ``in_proj`` is stored as
(D, 2, E) with index 0 = x and 1 = z (mamba_ssm's ``xz.chunk(2)`` order), so the d_inner axis shards cleanly.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.cache import Cursor, Mamba1State
from ssmjax.config import Mamba1Config
from ssmjax.layers.conv import CausalConv1d
from ssmjax.layers.params import Inits, param, torch_default_uniform, uniform
from ssmjax.mixers import scans
from ssmjax.mixers.mamba2 import dt_bias_init


def s4d_real_a_log_init(key, shape, dtype=jnp.float32):
  """A_log[e, n] = log(n + 1) for every channel e (S4D-real), so A = -(1, 2, ..., N)."""
  del key
  return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=jnp.float32)), shape).astype(dtype)


def selective_step(x: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, D: jax.Array | None,
                   z: jax.Array | None, state: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One step of the selective scan (SPEC §5.4), in float32.

  x, delta (B, E) (delta already biased and softplus'd), A (E, N), B and C (B, N), D (E,) or None, z (B, E) or None,
  state (B, E, N) -> (y (B, E) in x's dtype, new state (B, E, N) float32).
  ``h = exp(delta A) h + (delta x) B;  y = (h · C + D x) * silu(z)``.
  """
  f32 = jnp.float32
  x_be, delta_be = x.astype(f32), delta.astype(f32)
  state_ben = (jnp.exp(delta_be[..., None] * A.astype(f32)) * state.astype(f32)
               + (delta_be * x_be)[..., None] * B.astype(f32)[:, None, :])
  y_be = jnp.einsum("ben,bn->be", state_ben, C.astype(f32))
  if D is not None:
    y_be = y_be + D.astype(f32) * x_be
  if z is not None:
    y_be = y_be * jax.nn.silu(z.astype(f32))
  return y_be.astype(x.dtype), state_ben


class Mamba1Mixer(nn.Module):
  """``mixer(u)`` for a whole sequence; ``mixer(u, cache, cursor)`` continues from a `Mamba1State` -> (out, cache).

  With a cache, T > 1 new tokens run the selective scan from the cached state (prefill); T = 1 runs `selective_step`.
  Slots the cursor marks as left padding get zero conv inputs and delta = 0, so they leave the state untouched.
  """

  config: Mamba1Config
  inits: Inits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u: jax.Array, cache: Mamba1State | None = None,
               cursor: Cursor | None = None) -> jax.Array | tuple[jax.Array, Mamba1State]:
    cfg = self.config
    _, length, d_model = u.shape
    E, N, R = cfg.d_inner(d_model), cfg.d_state, cfg.resolved_dt_rank(d_model)
    u = u.astype(self.dtype)
    if (cache is None) != (cursor is None):
      raise ValueError("Mamba1Mixer: pass both cache and cursor (decoding) or neither (a whole sequence)")

    in_proj = param(self, "in_proj", torch_default_uniform(d_model), (d_model, 2, E), ("embed", None, "ssm_inner"),
                    self.param_dtype)
    xz = jnp.einsum("btd,dce->btce", u, in_proj.astype(self.dtype))
    if cfg.bias:
      xz = xz + param(self, "in_proj_bias", nn.initializers.zeros, (2, E), (None, "ssm_inner"),
                      self.param_dtype).astype(self.dtype)
    x, z = xz[:, :, 0], xz[:, :, 1]
    conv = CausalConv1d(cfg.d_conv, ("ssm_inner",), use_bias=cfg.conv_bias, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="conv1d")
    if cache is None:
      x = conv(x)
    else:
      valid_bt = cursor.valid(length)
      x, conv_state = conv(jnp.where(valid_bt[..., None], x, 0), state=cache.conv)
    x = jax.nn.silu(x)

    x_proj = param(self, "x_proj", torch_default_uniform(E), (E, R + 2 * N), ("ssm_inner", None), self.param_dtype)
    dt_low, B, C = jnp.split(jnp.einsum("bte,ek->btk", x, x_proj.astype(self.dtype)), [R, R + N], axis=-1)
    dt_proj = param(self, "dt_proj", uniform(R**-0.5 * cfg.dt_scale), (R, E), (None, "ssm_inner"), self.param_dtype)
    dt_proj_bias = param(self, "dt_proj_bias", dt_bias_init(cfg.dt_min, cfg.dt_max, cfg.dt_init_floor), (E,),
                         ("ssm_inner",), self.param_dtype)
    delta = jnp.einsum("btr,re->bte", dt_low, dt_proj.astype(self.dtype))  # the bias is added inside the scan

    A_log = param(self, "A_log", s4d_real_a_log_init, (E, N), ("ssm_inner", "ssm_state"), self.param_dtype)
    D = param(self, "D", nn.initializers.ones, (E,), ("ssm_inner",), self.param_dtype)
    A = -jnp.exp(A_log.astype(jnp.float32))
    if cache is None:
      y = scans.selective_scan(x, delta, A, B, C, D=D.astype(jnp.float32), z=z,
                               delta_bias=dt_proj_bias.astype(jnp.float32), delta_softplus=True,
                               implementation=cfg.implementation)
    else:
      # Bias and softplus here, so that padded slots can get delta = 0 (softplus never gives 0).
      delta = jax.nn.softplus(delta.astype(jnp.float32) + dt_proj_bias.astype(jnp.float32))
      delta = jnp.where(valid_bt[..., None], delta, 0.0)
      if length == 1:
        y, ssm_state = selective_step(x[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], D, z[:, 0], cache.ssm)
        y = y[:, None]
      else:
        y, ssm_state = scans.selective_scan(x, delta, A, B, C, D=D.astype(jnp.float32), z=z,
                                               initial_state=cache.ssm, return_final_state=True,
                                               implementation=cfg.implementation)

    out_proj = param(self, "out_proj", self.inits.residual_out(E, mamba=True), (E, d_model), ("ssm_inner", "embed"),
                     self.param_dtype)
    out = jnp.einsum("bte,ed->btd", y.astype(self.dtype), out_proj.astype(self.dtype))
    if cfg.bias:
      out = out + param(self, "out_proj_bias", nn.initializers.zeros, (d_model,), ("embed",),
                        self.param_dtype).astype(self.dtype)
    if cache is None:
      return out
    return out, Mamba1State(conv=conv_state, ssm=ssm_state)

  def prefill(self, u: jax.Array, cache: Mamba1State, cursor: Cursor) -> tuple[jax.Array, Mamba1State]:
    """u (B, T, D) after the tokens already in ``cache`` -> (out (B, T, D), cache after them)."""
    return self(u, cache, cursor)

  def step(self, u: jax.Array, cache: Mamba1State, cursor: Cursor) -> tuple[jax.Array, Mamba1State]:
    """One token: u (B, D) -> (out (B, D), the new cache)."""
    out, cache = self(u[:, None], cache, cursor)
    return out[:, 0], cache
