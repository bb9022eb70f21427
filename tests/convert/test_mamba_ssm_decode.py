"""Decoding converted mamba_ssm hybrids whose attention has a q|k|v conv: prefill + steps equal the full forward.

The ``mamba2attn_conv*`` fixtures' logits match PyTorch (test_mamba_ssm.py); here the same models decode. The conv
state of their attention layers (`ConvKVCache.conv`, the last d_conv pre-conv q|k|v inputs) must carry the window
across a prefill shorter than the conv, a prefill continued by another, single-token steps, and left padding.

mamba_ssm's own ``MHA`` fills its conv state at prefill with the *convolved* q|k|v (mamba_ssm/modules/mha.py, stored
version 1f9da4d), so its first d_conv - 1 generated tokens differ from its full forward; ssmjax keeps the raw inputs,
which is what makes decoding equal the forward pass that the checkpoint's logits are defined by.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import ssmjax
from ssmjax import sharding
from ssmjax.cache import ConvKVCache, Cursor, KVCache, cache_shardings, init_cache
from ssmjax.layers.params import Inits
from ssmjax.mixers.attention import Attention

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mamba_ssm")
LENGTH = 13


@functools.cache
def _model(case):
  return ssmjax.load_pretrained(os.path.join(FIXTURES, case))


def _decode(fns, config, params, ids, prefill_lengths, offsets=None):
  """Logits (B, T, V) of prefilling ``prefill_lengths`` tokens one chunk after another, then stepping the rest."""
  cache = init_cache(config, ids.shape[0], ids.shape[1], offsets)
  pieces, start = [], 0
  for k in prefill_lengths:
    logits, cache = fns.extend(config, params, ids[:, start:start + k], cache)
    pieces.append(np.asarray(logits))
    start += k
  for t in range(start, ids.shape[1]):
    logits, cache = fns.step(config, params, ids[:, t], cache)
    pieces.append(np.asarray(logits)[:, None])
  return np.concatenate(pieces, axis=1), cache


@pytest.mark.parametrize("case", ["mamba2attn_conv", "mamba2attn_conv_gqa"])
def test_prefill_then_step_matches_full_forward(case, model_fns):
  # A prefill of 2 tokens (fewer than the conv widths 4 and 3), continued by a prefill of 5, then single steps.
  config, params = _model(case)
  ids = jax.random.randint(jax.random.PRNGKey(3), (2, LENGTH), 0, config.vocab_size)
  full = np.asarray(model_fns.full(config, params, ids))
  decoded, cache = _decode(model_fns, config, params, ids, [2, 5])
  np.testing.assert_allclose(decoded, full, atol=1e-4, rtol=0)
  a = config.attention
  for kind, layer in zip(config.pattern, cache.layers):
    if kind == "*":
      assert isinstance(layer, ConvKVCache)
      assert layer.conv.shape == (2, a.qkv_dim(config.d_model), a.d_conv)


def test_left_padded_sequence_decodes_as_if_unpadded(model_fns):
  # Given a batch whose second sequence is its first one's last 9 tokens behind 4 padding slots
  config, params = _model("mamba2attn_conv")
  ids = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (1, LENGTH), 0, config.vocab_size))
  padded = np.concatenate([ids, np.concatenate([np.zeros((1, 4), ids.dtype), ids[:, 4:]], axis=1)])
  # When both decode (prefill 7, then steps) with the padding marked by offsets
  decoded, _ = _decode(model_fns, config, params, jnp.asarray(padded), [7], offsets=[0, 4])
  # Then each sequence's logits are those of its own unpadded full forward
  np.testing.assert_allclose(decoded[0], np.asarray(model_fns.full(config, params, ids))[0], atol=1e-4, rtol=0)
  np.testing.assert_allclose(decoded[1, 4:], np.asarray(model_fns.full(config, params, ids[:, 4:]))[0], atol=1e-4, rtol=0)


def test_the_conv_state_holds_the_raw_inputs():
  # Given the converted attention layer and a cache holding d_conv - 1 = 3 earlier tokens
  config, params = _model("mamba2attn_conv")
  layer = config.pattern.index("*")
  weights = params[f"layers_{layer}"]["attention"]
  attention = Attention(config.attention, Inits("mamba_ssm", 0.02, config.num_layers))
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 3, config.d_model))
  cache = init_cache(config, 2, 4).layers[layer]
  cursor = Cursor(index=jnp.zeros((), jnp.int32), offsets=jnp.zeros((2,), jnp.int32))
  _, cache = jax.jit(attention.apply)({"params": weights}, x, cache=cache, cursor=cursor)
  # Then the state is [0, raw q|k|v of tokens 0, 1, 2]: the projections before the conv, channels [q, k, v]
  projected = np.concatenate([np.einsum("btd,dhk->bthk", x, weights[f"{name}_proj"]).reshape(2, 3, -1)
                              for name in "qkv"], axis=-1)
  state = np.asarray(cache.conv)
  np.testing.assert_allclose(state[..., 1:], projected.transpose(0, 2, 1), atol=1e-5, rtol=0)
  np.testing.assert_array_equal(state[..., 0], 0)


def test_a_plain_kv_cache_is_refused_for_a_conv_attention(model_fns):
  config, params = _model("mamba2attn_conv")
  cache = init_cache(config, 1, 4)
  layers = tuple(KVCache(k=c.k, v=c.v) if isinstance(c, ConvKVCache) else c for c in cache.layers)
  with pytest.raises(TypeError, match="ConvKVCache"):
    model_fns.extend(config, params, jnp.asarray([[1, 2]]), cache.replace(layers=layers))


def test_the_conv_cache_shards_by_logical_names():
  config, _ = _model("mamba2attn_conv_gqa")
  cache = init_cache(config, 4, 3)
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 1, 2), sharding.MESH_AXES)
  layer = cache_shardings(cache, mesh).layers[config.pattern.index("*")]
  # Batch over data x fsdp; the q|k|v channels replicated (they mix query and kv heads); keys over kv heads.
  assert layer.conv.spec == PartitionSpec(("data", "fsdp"), None, None)
  assert layer.k.spec == PartitionSpec(("data", "fsdp"), "tensor", None, None)
  placed = jax.device_put(cache, cache_shardings(cache, mesh))
  assert placed.layers[config.pattern.index("*")].conv.shape == (4, 64, 3)
