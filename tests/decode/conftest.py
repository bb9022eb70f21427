"""Shared pieces of the decoding tests: tiny models with random parameters, and jitted model calls.

`tiny_model` fills the parameter shapes of a preset (``jax.eval_shape`` of ``init``, no compilation) with random
values of sensible scale: decode-vs-forward equivalence holds for any parameters, and skipping the compiled ``init``
saves about half of these tests' CPU time. `model_fns` (jitted model calls) is in tests/conftest.py.
"""

import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmjax
from ssmjax import presets


def _random_leaf(rng: np.random.Generator, path, shape_dtype) -> np.ndarray:
  name, shape = jax.tree_util.keystr(path[-1:]), shape_dtype.shape
  if "A_log" in name:
    value = np.log(rng.uniform(1.0, 16.0, shape))
  elif "dt_bias" in name or "dt_proj_bias" in name:  # softplus(dt + bias) of about 0.02 .. 0.3
    value = rng.uniform(-4.0, -1.0, shape)
  elif "scale" in name or name == "['D']":
    value = 1.0 + 0.1 * rng.standard_normal(shape)
  elif len(shape) == 1:
    value = 0.1 * rng.standard_normal(shape)
  else:  # kernels are (fan_in, ...)
    value = rng.standard_normal(shape) / np.sqrt(shape[0])
  return value.astype(shape_dtype.dtype)


@functools.lru_cache(maxsize=None)
def _tiny(name: str, overrides: tuple = ()):
  config = presets.get(name).replace(**dict(overrides))
  abstract = jax.eval_shape(ssmjax.LanguageModel(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  rng = np.random.default_rng(zlib.crc32(repr((name, overrides)).encode()))
  params = jax.tree_util.tree_map_with_path(lambda p, leaf: jnp.asarray(_random_leaf(rng, p, leaf)),
                                            nn.meta.unbox(abstract["params"]))
  return config, params


@pytest.fixture(scope="session")
def tiny_model():
  """``tiny_model(preset_name, **config_overrides) -> (config, params)``, cached for the session."""
  return lambda name, **overrides: _tiny(name, tuple(sorted(overrides.items())))
