"""The Mamba-1 mixer (SPEC §4.5): in_proj to [x, z], causal conv on x, input-dependent dt/B/C, selective scan, z gate.

Notation: B batch, T length, D d_model, E d_inner, N d_state, R dt_rank, K conv width. ``in_proj`` is stored as
(D, 2, E) with index 0 = x and 1 = z (mamba_ssm's ``xz.chunk(2)`` order), so the d_inner axis shards cleanly.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import pallas_kernels
from ssmjax.config import Mamba1Config
from ssmjax.layers.conv import CausalConv1d
from ssmjax.layers.params import Inits, param, torch_default_uniform, uniform
from ssmjax.mixers.mamba2 import dt_bias_init


def s4d_real_a_log_init(key, shape, dtype=jnp.float32):
  """A_log[e, n] = log(n + 1) for every channel e (S4D-real), so A = -(1, 2, ..., N)."""
  del key
  return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=jnp.float32)), shape).astype(dtype)


class Mamba1Mixer(nn.Module):
  config: Mamba1Config
  inits: Inits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u: jax.Array) -> jax.Array:
    cfg = self.config
    _, _, d_model = u.shape
    E, N, R = cfg.d_inner(d_model), cfg.d_state, cfg.resolved_dt_rank(d_model)
    u = u.astype(self.dtype)

    in_proj = param(self, "in_proj", torch_default_uniform(d_model), (d_model, 2, E), ("embed", None, "ssm_inner"),
                    self.param_dtype)
    xz = jnp.einsum("btd,dce->btce", u, in_proj.astype(self.dtype))
    if cfg.bias:
      xz = xz + param(self, "in_proj_bias", nn.initializers.zeros, (2, E), (None, "ssm_inner"),
                      self.param_dtype).astype(self.dtype)
    x, z = xz[:, :, 0], xz[:, :, 1]
    x = jax.nn.silu(CausalConv1d(cfg.d_conv, ("ssm_inner",), use_bias=cfg.conv_bias, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="conv1d")(x))

    x_proj = param(self, "x_proj", torch_default_uniform(E), (E, R + 2 * N), ("ssm_inner", None), self.param_dtype)
    dt_low, B, C = jnp.split(jnp.einsum("bte,ek->btk", x, x_proj.astype(self.dtype)), [R, R + N], axis=-1)
    dt_proj = param(self, "dt_proj", uniform(R**-0.5 * cfg.dt_scale), (R, E), (None, "ssm_inner"), self.param_dtype)
    dt_proj_bias = param(self, "dt_proj_bias", dt_bias_init(cfg.dt_min, cfg.dt_max, cfg.dt_init_floor), (E,),
                         ("ssm_inner",), self.param_dtype)
    delta = jnp.einsum("btr,re->bte", dt_low, dt_proj.astype(self.dtype))  # the bias is added inside the scan

    A_log = param(self, "A_log", s4d_real_a_log_init, (E, N), ("ssm_inner", "ssm_state"), self.param_dtype)
    D = param(self, "D", nn.initializers.ones, (E,), ("ssm_inner",), self.param_dtype)
    A = -jnp.exp(A_log.astype(jnp.float32))
    y = pallas_kernels.selective_scan(x, delta, A, B, C, D=D.astype(jnp.float32), z=z,
                                      delta_bias=dt_proj_bias.astype(jnp.float32), delta_softplus=True,
                                      implementation=cfg.implementation)

    out_proj = param(self, "out_proj", self.inits.residual_out(E, mamba=True), (E, d_model), ("ssm_inner", "embed"),
                     self.param_dtype)
    out = jnp.einsum("bte,ed->btd", y.astype(self.dtype), out_proj.astype(self.dtype))
    if cfg.bias:
      out = out + param(self, "out_proj_bias", nn.initializers.zeros, (d_model,), ("embed",),
                        self.param_dtype).astype(self.dtype)
    return out
