"""Position-wise MLPs: exact GELU (the hybrid), squared ReLU (the 8B Transformer), SwiGLU (Llama, state-spaces)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.config import MLPConfig
from ssmjax.layers.params import Inits, param

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "squared_relu": lambda x: jnp.square(jax.nn.relu(x)),
    "swiglu": jax.nn.silu,  # applied to the gate branch
}


class MLP(nn.Module):
  """fc2(act(fc1 x)); for ``swiglu``: fc2(fc1 x * silu(gate x)) (Llama's up/gate/down)."""

  config: MLPConfig
  inits: Inits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d_model, hidden = x.shape[-1], self.config.hidden_size
    act = ACTIVATIONS[self.config.activation]
    x = x.astype(self.dtype)

    fc1 = param(self, "fc1", self.inits.dense(d_model), (d_model, hidden), ("embed", "mlp"), self.param_dtype)
    h = jnp.einsum("btd,df->btf", x, fc1.astype(self.dtype))
    if self.config.bias:
      h = h + param(self, "fc1_bias", nn.initializers.zeros, (hidden,), ("mlp",), self.param_dtype).astype(self.dtype)
    if self.config.activation == "swiglu":
      gate = param(self, "gate", self.inits.dense(d_model), (d_model, hidden), ("embed", "mlp"), self.param_dtype)
      g = jnp.einsum("btd,df->btf", x, gate.astype(self.dtype))
      if self.config.bias:
        g = g + param(self, "gate_bias", nn.initializers.zeros, (hidden,), ("mlp",),
                      self.param_dtype).astype(self.dtype)
      h = h * act(g)
    else:
      h = act(h)
    fc2 = param(self, "fc2", self.inits.residual_out(hidden, mamba=False), (hidden, d_model), ("mlp", "embed"),
                self.param_dtype)
    y = jnp.einsum("btf,fd->btd", h, fc2.astype(self.dtype))
    if self.config.bias:
      y = y + param(self, "fc2_bias", nn.initializers.zeros, (d_model,), ("embed",),
                    self.param_dtype).astype(self.dtype)
    return y
