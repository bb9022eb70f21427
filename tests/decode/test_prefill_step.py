"""Prefill + single-token steps reproduce the full forward's logits, for every layer kind and a hybrid stack.

The invariant decoding rests on (SPEC §9.1 item 2): running the prompt through the chunked path into a cache, then
one token at a time through the recurrent `step`, gives the same logits as the whole sequence at once (fp32, 1e-4).
Every preset: prefill of 11 tokens (not a multiple of the chunk length 16) then steps. Mamba-1 and the hybrid also:
prefill of 2 tokens (fewer than the conv width, so the conv state is still partly zero padding), and a prefill
continued by a second prefill (a non-zero initial SSM state; keys written at an offset).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmjax
from ssmjax.cache import init_cache
from ssmjax.config import Mamba2Config

LENGTH = 20
# Every layer kind, RoPE (partial and full, MHA and GQA), NoPE attention in a hybrid stack, and a Mamba-2 dt clamp
# (both paths must clamp it the same way; HF skips it when decoding, SPEC §10).
CASES = [("tiny_mamba", {}), ("tiny_mamba2", {}), ("tiny_transformer", {}), ("tiny_llama", {}), ("tiny_hybrid", {}),
         ("tiny_mamba2", {"mamba2": Mamba2Config(d_state=16, headdim=16, ngroups=2, chunk_size=16,
                                                 dt_limit=(0.05, 0.2))})]
CASE_IDS = ["mamba1", "mamba2", "transformer", "llama", "hybrid", "mamba2_dt_limit"]


def _prefill_then_step(fns, config, params, ids, prefill_lengths):
  """Logits (B, T, V) from prefilling ``prefill_lengths`` tokens one chunk after another, then stepping the rest."""
  cache = init_cache(config, ids.shape[0], LENGTH)
  pieces, start = [], 0
  for k in prefill_lengths:
    logits, cache = fns.extend(config, params, ids[:, start:start + k], cache)
    pieces.append(np.asarray(logits))
    start += k
  for t in range(start, ids.shape[1]):
    logits, cache = fns.step(config, params, ids[:, t], cache)
    pieces.append(np.asarray(logits)[:, None])
  assert int(cache.cursor.index) == ids.shape[1]
  return np.concatenate(pieces, axis=1)


@pytest.mark.parametrize("name, overrides", CASES, ids=CASE_IDS)
def test_prefill_then_step_matches_full_forward(tiny_model, model_fns, name, overrides):
  config, params = tiny_model(name, **overrides)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, LENGTH), 0, config.vocab_size)
  full = np.asarray(model_fns.full(config, params, ids))
  assert np.isfinite(full).all() and full.std() > 0.1  # a model whose logits carry signal
  decoded = _prefill_then_step(model_fns, config, params, ids, [11])
  np.testing.assert_allclose(decoded, full, atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("name", ["tiny_mamba", "tiny_hybrid"])
@pytest.mark.parametrize("prefill_lengths", [[2], [5, 8]], ids=["short_prefill", "prefill_continued"])
def test_short_and_continued_prefill_match_full_forward(tiny_model, model_fns, name, prefill_lengths):
  config, params = tiny_model(name)
  ids = jax.random.randint(jax.random.PRNGKey(2), (2, LENGTH), 0, config.vocab_size)
  full = np.asarray(model_fns.full(config, params, ids))
  decoded = _prefill_then_step(model_fns, config, params, ids, prefill_lengths)
  np.testing.assert_allclose(decoded, full, atol=1e-4, rtol=0, err_msg=f"{name} {prefill_lengths}")


def test_cache_has_the_documented_shapes(tiny_model, model_fns):
  config, params = tiny_model("tiny_hybrid")
  cache = init_cache(config, 2, 9)
  m, a = config.mamba2, config.attention
  for kind, layer in zip(config.pattern, cache.layers):
    if kind == "M":
      assert layer.conv.shape == (2, m.conv_dim(config.d_model), m.d_conv)
      assert layer.ssm.shape == (2, m.resolved_nheads(config.d_model), m.headdim, m.d_state)
      assert layer.ssm.dtype == jnp.float32
    elif kind == "*":
      assert layer.k.shape == layer.v.shape == (2, a.resolved_kv_heads(), 9, a.resolved_head_dim(config.d_model))
    else:
      assert layer is None
  logits, new_cache = model_fns.step(config, params, jnp.ones((2,), jnp.int32), cache)
  assert logits.shape == (2, config.vocab_size)
  assert int(new_cache.cursor.index) == 1
  assert jax.tree_util.tree_structure(new_cache) == jax.tree_util.tree_structure(cache)
  # Decoding never rematerialises, and a remat config keeps the parameter tree: the same parameters decode alike.
  remat_logits, _ = model_fns.step(config.replace(remat_policy="full"), params, jnp.ones((2,), jnp.int32), cache)
  np.testing.assert_array_equal(np.asarray(remat_logits), np.asarray(logits))


def test_cache_with_the_wrong_number_of_layers_is_rejected(tiny_model):
  config, params = tiny_model("tiny_mamba2")
  cache = init_cache(config.replace(pattern="MM"), 1, 4)
  with pytest.raises(ValueError, match="cache has 2 layers"):
    ssmjax.LanguageModel(config).apply({"params": params}, jnp.ones((1, 1), jnp.int32), cache)
