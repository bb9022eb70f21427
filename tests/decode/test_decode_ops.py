"""The decode building blocks against their references: the conv state, the SSM steps, cached attention, sharding.

  causal_conv1d_with_state  == causal_conv1d_reference over [earlier inputs, new inputs] (last outputs kept)
  ssd_step (Mamba-2)        == pallas_kernels.ssd "reference" on one step from the same initial state
  selective_step (Mamba-1)  == pallas_kernels.selective_scan "reference" on one step from the same initial state
  cached_attention          == the naive causal attention of each sequence alone, under left padding
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import pallas_kernels
from ssmjax import sharding
from ssmjax.cache import CACHE_RULES, Cursor, KVCache, cache_logical_axes, cache_shardings, init_cache
from ssmjax.layers.conv import causal_conv1d_reference, causal_conv1d_with_state
from ssmjax.mixers.attention import attention_reference, cached_attention
from ssmjax.mixers.mamba1 import selective_step
from ssmjax.mixers.mamba2 import ssd_step
from ssmjax import presets


jit = jax.jit  # everything under test runs compiled: eager op-by-op dispatch is what would be slow here


def _normal(seed, shape, scale=1.0):  # NumPy: jax.random would compile once per shape
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("earlier, new", [(0, 5), (2, 1), (7, 1), (6, 9)])
def test_conv_with_state_continues_the_full_convolution(earlier, new):
  width, channels = 4, (2, 3)  # Mamba-2's (groups, channels per group) layout
  x = _normal(0, (2, earlier + new, *channels))
  kernel, bias = _normal(1, (width, *channels)), _normal(2, channels)
  expected = jit(causal_conv1d_reference)(x, kernel, bias)[:, earlier:]
  # The state after the earlier inputs: the last K of them, zeros before the first; channels first, time last.
  history = np.pad(np.asarray(x[:, :earlier]), [(0, 0), (width, 0), (0, 0), (0, 0)])[:, -width:]
  state = jnp.asarray(np.moveaxis(history, 1, -1))
  y, new_state = jit(causal_conv1d_with_state)(x[:, earlier:], kernel, bias, state)
  np.testing.assert_allclose(y, expected, atol=1e-6)
  full_history = np.pad(np.asarray(x), [(0, 0), (width, 0), (0, 0), (0, 0)])[:, -width:]
  np.testing.assert_array_equal(new_state, np.moveaxis(full_history, 1, -1))
  with pytest.raises(ValueError, match=r"state must have shape \(batch, \*channels, K\)"):
    causal_conv1d_with_state(x, kernel, bias, state[..., 1:])


def test_ssd_step_is_one_step_of_the_reference_scan():
  batch, heads, headdim, groups, dstate = 2, 6, 4, 3, 5
  x, B, C = _normal(0, (batch, 1, heads, headdim)), _normal(1, (batch, 1, groups, dstate)), _normal(
      2, (batch, 1, groups, dstate))
  dt = jnp.asarray(np.log1p(np.exp(np.asarray(_normal(3, (batch, 1, heads))))))  # softplus
  A = jnp.asarray(-np.exp(np.asarray(_normal(4, (heads,)))))
  D, state = _normal(5, (heads,)), _normal(6, (batch, heads, headdim, dstate))
  y_ref, state_ref = pallas_kernels.ssd(x, dt, A, B, C, chunk_size=4, D=D, initial_state=state,
                                        return_final_state=True, implementation="reference")
  y, new_state = jit(lambda x, dt, B, C: ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, state))(x, dt, B, C)
  np.testing.assert_allclose(y, y_ref[:, 0], atol=1e-5)
  np.testing.assert_allclose(new_state, state_ref, atol=1e-5)


def test_selective_step_is_one_step_of_the_reference_scan():
  batch, channels, dstate = 2, 6, 4
  x, z, delta = _normal(0, (batch, 1, channels)), _normal(1, (batch, 1, channels)), _normal(2, (batch, 1, channels))
  B, C = _normal(3, (batch, 1, dstate)), _normal(4, (batch, 1, dstate))
  A, D, bias = jnp.asarray(-np.exp(np.asarray(_normal(5, (channels, dstate))))), _normal(6, (channels,)), _normal(
      7, (channels,))
  state = _normal(8, (batch, channels, dstate))
  y_ref, state_ref = pallas_kernels.selective_scan(x, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                                   initial_state=state, return_final_state=True,
                                                   implementation="reference")
  step = jit(lambda x, delta, B, C, z: selective_step(x[:, 0], jax.nn.softplus(delta[:, 0] + bias), A, B[:, 0],
                                                        C[:, 0], D, z[:, 0], state))
  y, new_state = step(x, delta, B, C, z)
  np.testing.assert_allclose(y, y_ref[:, 0], atol=1e-5)
  np.testing.assert_allclose(new_state, state_ref, atol=1e-5)


def test_cached_attention_under_left_padding_equals_each_sequence_alone():
  heads, kv_heads, head_dim, slots = 4, 2, 8, 12
  lengths = [5, 9]  # real tokens so far, before this call's 3 new ones
  offsets = jnp.array([9 - n for n in lengths], jnp.int32)  # left padding to 9 slots
  keys, values = _normal(0, (2, 12, kv_heads, head_dim)), _normal(1, (2, 12, kv_heads, head_dim))
  queries = _normal(2, (2, 12, heads, head_dim))

  def head_major_cache(a):  # the first 9 slots filled, the rest empty
    filled = np.zeros((2, kv_heads, slots, head_dim), np.float32)
    filled[:, :, :9] = np.asarray(a[:, :9]).transpose(0, 2, 1, 3)
    return jnp.asarray(filled)

  cache = KVCache(k=head_major_cache(keys), v=head_major_cache(values))
  cursor = Cursor(index=jnp.int32(9), offsets=offsets)
  out = jit(cached_attention)(queries[:, 9:], keys[:, 9:], values[:, 9:], cache, cursor)
  # Padded queries (a prefill over left padding) see nothing, and must still give finite numbers.
  assert np.isfinite(np.asarray(jit(cached_attention)(queries[:, :9], keys[:, :9], values[:, :9],
                                                      init_cache_kv(2, kv_heads, slots, head_dim),
                                                      Cursor(index=jnp.int32(0), offsets=offsets)))).all()
  for row, offset in enumerate(np.asarray(offsets)):
    alone = jit(attention_reference)(queries[row:row + 1, offset:], keys[row:row + 1, offset:],
                                     values[row:row + 1, offset:])  # one compile per offset: 2 small ones
    np.testing.assert_allclose(out[row], alone[0, -3:], atol=1e-5, err_msg=f"row {row}")


def init_cache_kv(batch, kv_heads, slots, head_dim):
  return KVCache(k=jnp.zeros((batch, kv_heads, slots, head_dim)), v=jnp.zeros((batch, kv_heads, slots, head_dim)))


def test_cache_logical_axes_shard_the_cache_on_a_mesh():
  config = presets.get("tiny_hybrid")  # 8 Mamba-2 heads in 2 groups, 2 KV heads
  cache = init_cache(config, batch=4, max_len=16)
  axes = cache_logical_axes(cache)
  for leaf, spec in zip(jax.tree_util.tree_leaves(cache), jax.tree_util.tree_leaves(axes)):
    assert len(spec) == leaf.ndim
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 1, 2), sharding.MESH_AXES)
  shardings = cache_shardings(cache, mesh)
  placed = jax.device_put(cache, shardings)
  mamba, attention = placed.layers[0], placed.layers[config.pattern.index("*")]
  batch = ("data", "fsdp")
  assert mamba.conv.sharding.spec == PartitionSpec(batch, "tensor", None)  # group-major conv channels over tensor
  assert mamba.ssm.sharding.spec == PartitionSpec(batch, "tensor", None, None)
  assert attention.k.sharding.spec == PartitionSpec(batch, "tensor", None, None)
  # Each tensor shard of the conv state holds whole groups: G * (Hg*P + 2N) channels split in G-aligned halves.
  per_device = mamba.conv.addressable_shards[0].data.shape[1]
  assert per_device == config.mamba2.conv_dim(config.d_model) // 2
  assert all(isinstance(s, NamedSharding) for s in jax.tree_util.tree_leaves(shardings))
  assert dict(CACHE_RULES).keys().isdisjoint(dict(sharding.DEFAULT_RULES))
