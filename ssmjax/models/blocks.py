"""Residual sub-blocks: ``h + sublayer(norm(h))`` for each symbol of the pattern (M Mamba, * attention, - MLP).

Each block also runs on the next tokens of a cached prefix (decoding), threading its layer's cache through.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.cache import Cursor
from ssmjax.config import ATTENTION, MAMBA, MLP, ModelConfig
from ssmjax.layers.mlp import MLP as MLPLayer
from ssmjax.layers.norms import make_norm
from ssmjax.layers.params import Inits
from ssmjax.mixers.attention import Attention
from ssmjax.mixers.mamba1 import Mamba1Mixer
from ssmjax.mixers.mamba2 import Mamba2Mixer
from ssmjax.sharding import ACT_EMBED, BATCH, LENGTH, constrain

# jax.checkpoint policies for ModelConfig.remat_policy ("none" does not rematerialise).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# The name of each kind's sub-layer in the parameter tree (``layers_{i}/<name>``), next to ``layers_{i}/norm``.
SUBLAYER_NAMES = {MAMBA: "mixer", ATTENTION: "attention", MLP: "mlp"}


def make_sublayer(kind: str, config: ModelConfig, inits: Inits) -> nn.Module:
  dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
  name = SUBLAYER_NAMES[kind]
  if kind == MAMBA and config.mamba_version == 2:
    return Mamba2Mixer(config.mamba2, inits, norm_eps=config.norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == MAMBA:
    return Mamba1Mixer(config.mamba1, inits, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == ATTENTION:
    return Attention(config.attention, inits, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == MLP:
    return MLPLayer(config.mlp, inits, dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"unknown layer kind {kind!r}; expected one of 'M', '*', '-'")


class ResidualBlock(nn.Module):
  """One pre-norm residual sub-block. The residual stream is float32 when ``config.residual_in_fp32``.

  ``block(h)`` for a whole sequence; ``block(h, cache, cursor)`` for the next tokens after a cached prefix, returning
  ``(h, new_cache)`` (an MLP has no state: its cache is None).
  """

  kind: str
  config: ModelConfig
  inits: Inits

  @nn.compact
  def __call__(self, h: jax.Array, cache: Any = None,
               cursor: Cursor | None = None) -> jax.Array | tuple[jax.Array, Any]:
    cfg = self.config
    normed = make_norm(cfg.norm, cfg.norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name="norm")(h)
    sublayer = make_sublayer(self.kind, cfg, self.inits)
    if cursor is None or self.kind == MLP:
      out = sublayer(normed)
    elif self.kind == ATTENTION:
      out, cache = sublayer(normed, cache=cache, cursor=cursor)
    else:
      out, cache = sublayer(normed, cache, cursor)
    residual_dtype = jnp.float32 if cfg.residual_in_fp32 else jnp.dtype(cfg.dtype)
    h = constrain(h.astype(residual_dtype) + out.astype(residual_dtype), (BATCH, LENGTH, ACT_EMBED))
    return h if cursor is None else (h, cache)


def block_class(config: ModelConfig) -> type[nn.Module]:
  """`ResidualBlock`, wrapped in ``nn.remat`` with the configured policy unless ``remat_policy == "none"``."""
  if config.remat_policy == "none":
    return ResidualBlock
  return nn.remat(ResidualBlock, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=True)
