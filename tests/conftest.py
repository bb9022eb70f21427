"""Test setup: 8 virtual CPU devices (for sharding tests), set before JAX is imported anywhere; jitted model calls.

`model_fns` are module-level ``jax.jit`` functions (config static), so every test that calls them with the same config
and shapes shares one compilation.
"""

import functools
import os
import types

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402

import ssmjax  # noqa: E402


@functools.partial(jax.jit, static_argnums=0)
def _full(config, params, ids):
  return ssmjax.LanguageModel(config).apply({"params": params}, ids)


@functools.partial(jax.jit, static_argnums=0)
def _extend(config, params, ids, cache):
  return ssmjax.LanguageModel(config).apply({"params": params}, ids, cache)


@functools.partial(jax.jit, static_argnums=0)
def _step(config, params, token_ids, cache):
  return ssmjax.LanguageModel(config).apply({"params": params}, token_ids, cache, method="step")


@pytest.fixture(scope="session")
def model_fns():
  """``full(config, params, ids) -> logits``; ``extend(config, params, ids, cache) -> (logits, cache)`` (prefill);
  ``step(config, params, token_ids, cache) -> (logits, cache)``."""
  return types.SimpleNamespace(full=_full, extend=_extend, step=_step)
