"""`LanguageModel`: token embedding, the residual sub-blocks of the pattern, a final norm and float32 logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.config import ModelConfig
from ssmjax.layers.embed import Embed
from ssmjax.layers.norms import make_norm
from ssmjax.layers.params import Inits, param
from ssmjax.models.blocks import block_class
from ssmjax.sharding import ACT_EMBED, ACT_VOCAB, BATCH, LENGTH, constrain


def model_inits(config: ModelConfig) -> Inits:
  return Inits(style=config.init_style, std=config.init_std, num_layers=config.init_depth or config.num_layers)


class LanguageModel(nn.Module):
  """``LanguageModel(config).apply({"params": params}, input_ids)`` -> logits (B, T, V) in float32.

  Parameters: ``embed/embedding`` (V, D); ``layers_{i}/norm`` and ``layers_{i}/{mixer|attention|mlp}`` for the i-th
  symbol of ``config.pattern``; ``final_norm``; ``lm_head`` (D, V) unless the embeddings are tied.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    cfg = self.config
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must have shape (batch, seqlen), got {input_ids.shape}")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    inits = model_inits(cfg)
    embed = Embed(cfg.vocab_size, cfg.d_model, inits.embedding(), dtype=dtype, param_dtype=param_dtype, name="embed")
    h = constrain(embed(input_ids), (BATCH, LENGTH, ACT_EMBED))
    block = block_class(cfg)
    for i, kind in enumerate(cfg.pattern):
      h = block(kind, cfg, inits, name=f"layers_{i}")(h)
    h = make_norm(cfg.norm, cfg.norm_eps, dtype, param_dtype, name="final_norm")(h)
    if cfg.tie_embeddings:
      logits = embed.attend(h)
    else:
      lm_head = param(self, "lm_head", inits.dense(cfg.d_model), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                      param_dtype)
      logits = jnp.einsum("btd,dv->btv", h.astype(dtype), lm_head.astype(dtype))
    return constrain(logits.astype(jnp.float32), (BATCH, LENGTH, ACT_VOCAB))
