"""A tiny Mamba-2 + attention model with random parameters, a checkpoint of it, and a slow reference scorer.

Shared by test_perplexity.py, test_lm_eval.py and test_eval_subcommands.py. The parameters fill the shapes of
``init`` (``jax.eval_shape``: nothing compiled) with random values of a sensible scale, so the model's predictions are
not uniform. Every test uses this one config, so jitted programs are shared within a pytest process.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import ssmjax
from ssmjax.checkpoint import save_model
from ssmjax.config import AttentionConfig, Mamba2Config, ModelConfig

# 264 >= the byte tokenizer's 258 ids. One Mamba-2 layer and one attention layer: both kinds of causal mixing.
CONFIG = ModelConfig(vocab_size=264, d_model=32, pattern="M*",
                     mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=1, chunk_size=8),
                     attention=AttentionConfig(num_heads=2))


def _leaf(rng: np.random.Generator, path, leaf) -> np.ndarray:
  name = jax.tree_util.keystr(path)
  if "A_log" in name:
    value = np.log(rng.uniform(1.0, 16.0, leaf.shape))
  elif "dt_bias" in name:
    value = rng.uniform(-4.0, -1.0, leaf.shape)
  elif len(leaf.shape) == 1:  # norm scales and D
    value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
  else:
    value = 2.0 * rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0])
  return value.astype(leaf.dtype)


@functools.lru_cache(maxsize=None)
def params(seed: int = 0):
  abstract = jax.eval_shape(ssmjax.LanguageModel(CONFIG).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(lambda p, leaf: jnp.asarray(_leaf(rng, p, leaf)),
                                          nn.meta.unbox(abstract["params"]))


def save_checkpoint(directory) -> str:
  path = os.path.join(str(directory), "tiny_model")
  save_model(path, CONFIG, params())
  return path


_computed: dict[tuple, np.ndarray] = {}


def reference_logprobs(tokens) -> np.ndarray:
  """log p(tokens[j] | tokens[:j]) for j = 1 .. len - 1: one unpadded, unbatched forward (not jitted: one call per
  sequence), then a float64 log-softmax per position.

  A causal model's scores of a prefix are the first entries of the whole sequence's: a sequence that is a prefix of
  one computed before reuses its scores (each call costs seconds on a loaded 2-core machine).
  """
  tokens = tuple(int(t) for t in tokens)
  for done, scores in _computed.items():
    if done[:len(tokens)] == tokens:
      return scores[:len(tokens) - 1]
  ids = jnp.asarray(np.asarray(tokens[:-1], np.int32)[None])
  logits = np.asarray(ssmjax.LanguageModel(CONFIG).apply({"params": params()}, ids)[0], np.float64)
  out = []
  for j in range(1, len(tokens)):
    row = logits[j - 1]
    log_z = row.max() + np.log(np.sum(np.exp(row - row.max())))
    out.append(row[tokens[j]] - log_z)
  _computed[tokens] = np.asarray(out)
  return _computed[tokens]
