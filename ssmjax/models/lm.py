"""`LanguageModel`: token embedding, the residual sub-blocks of the pattern, a final norm and float32 logits.

Decoding (``ssmjax.generate`` drives it): ``apply(..., cache=cache)`` runs the next tokens after a cached prefix and
returns the cache after them; the `LanguageModel.prefill` and `LanguageModel.step` methods wrap that. The parameter
tree is the same in every mode.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.cache import ModelCache
from ssmjax.config import ModelConfig
from ssmjax.layers.embed import Embed
from ssmjax.layers.norms import make_norm
from ssmjax.layers.params import Inits, param
from ssmjax.models.blocks import ResidualBlock, block_class
from ssmjax.sharding import ACT_EMBED, ACT_VOCAB, BATCH, LENGTH, VOCAB, constrain


def model_inits(config: ModelConfig) -> Inits:
  return Inits(style=config.init_style, std=config.init_std, num_layers=config.init_depth or config.num_layers)


class LanguageModel(nn.Module):
  """``LanguageModel(config).apply({"params": params}, input_ids)`` -> logits (B, T, V) in float32.

  Parameters: ``embed/embedding`` (V, D); ``layers_{i}/norm`` and ``layers_{i}/{mixer|attention|mlp}`` for the i-th
  symbol of ``config.pattern``; ``final_norm``; ``lm_head`` (D, V) unless the embeddings are tied.

  With ``cache`` (a `ssmjax.cache.ModelCache`), ``input_ids`` are the next T tokens after those in the cache and the
  result is ``(logits, new_cache)``; ``last_only`` keeps only the last position's logits (B, 1, V).
  ``return_hidden`` returns the final-normed hidden states (B, T, D) in the compute dtype instead of the logits (the
  train step's chunked cross-entropy applies the output layer itself, `ssmjax.models.loss`).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, cache: ModelCache | None = None, *, last_only: bool = False,
               return_hidden: bool = False) -> jax.Array | tuple[jax.Array, ModelCache]:
    cfg = self.config
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must have shape (batch, seqlen), got {input_ids.shape}")
    if cache is not None and len(cache.layers) != cfg.num_layers:
      raise ValueError(f"cache has {len(cache.layers)} layers, the pattern {cfg.pattern!r} has {cfg.num_layers}")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    inits = model_inits(cfg)
    embed = Embed(cfg.vocab_size, cfg.d_model, inits.embedding(), dtype=dtype, param_dtype=param_dtype, name="embed")
    h = constrain(embed(input_ids), (BATCH, LENGTH, ACT_EMBED))
    if cache is None:
      block = block_class(cfg)
      for i, kind in enumerate(cfg.pattern):
        h = block(kind, cfg, inits, name=f"layers_{i}")(h)
    else:  # No rematerialisation when decoding: there is no backward pass.
      layer_caches = []
      for i, kind in enumerate(cfg.pattern):
        h, layer_cache = ResidualBlock(kind, cfg, inits, name=f"layers_{i}")(h, cache.layers[i], cache.cursor)
        layer_caches.append(layer_cache)
      cache = ModelCache(layers=tuple(layer_caches), cursor=cache.cursor.advance(input_ids.shape[1]))
    if last_only:
      h = h[:, -1:]
    h = make_norm(cfg.norm, cfg.norm_eps, dtype, param_dtype, name="final_norm")(h)
    if not cfg.tie_embeddings:
      lm_head = param(self, "lm_head", inits.dense(cfg.d_model), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                      param_dtype)
    if return_hidden:  # the output layer is left to the caller (ssmjax.models.loss: chunked cross-entropy).
      h = constrain(h.astype(dtype), (BATCH, LENGTH, ACT_EMBED))
      return h if cache is None else (h, cache)
    if cfg.tie_embeddings:
      logits = embed.attend(h)
    else:  # whole over d_model where it is used (FSDP gathers the weight, not the activations).
      logits = jnp.einsum("btd,dv->btv", h.astype(dtype), constrain(lm_head.astype(dtype), (None, VOCAB)))
    logits = constrain(logits.astype(jnp.float32), (BATCH, LENGTH, ACT_VOCAB))
    return logits if cache is None else (logits, cache)

  def prefill(self, input_ids: jax.Array, cache: ModelCache) -> tuple[jax.Array, ModelCache]:
    """Tokens (B, T) after those in ``cache`` -> (logits of the last one (B, V), the cache after them)."""
    logits, cache = self(input_ids, cache, last_only=True)
    return logits[:, 0], cache

  def step(self, token_ids: jax.Array, cache: ModelCache) -> tuple[jax.Array, ModelCache]:
    """One token per sequence (B,) -> (its logits (B, V), the cache after it)."""
    logits, cache = self(token_ids[:, None], cache)
    return logits[:, 0], cache
