"""Token embedding, with ``attend`` for a tied output layer."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.layers.params import Initializer, param


class Embed(nn.Module):
  """``embedding`` (V, D); ``__call__`` looks tokens up, ``attend`` gives x @ embedding^T (tied logits)."""

  vocab_size: int
  features: int
  embedding_init: Initializer
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = param(self, "embedding", self.embedding_init, (self.vocab_size, self.features),
                           ("vocab", "embed"), self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("btd,vd->btv", x.astype(self.dtype), self.embedding.astype(self.dtype))
