"""The context-parallel conv (halo exchange) and ring attention equal the unsharded ops; when the model uses them.

On 8 virtual CPU devices, with the sequence split over ``context`` (8, or 4 next to ``data`` 2 / ``tensor`` 2), the
conv is compared to `causal_conv1d_reference` and the attention to `attention_reference` (GQA, causal), values and
gradients, in float32: values within 1e-5 and gradients within 1e-4 of their largest magnitude (observed ~1e-7:
only the order of float32 sums changes).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax import context_parallel
from ssmjax.layers.conv import causal_conv1d, causal_conv1d_reference
from ssmjax.mixers.attention import attention_reference
from ssmjax.sharding import DEFAULT_RULES, MESH_AXES


def _mesh(data=1, context=8, tensor=1):
  devices = np.asarray(jax.devices()[:data * context * tensor]).reshape(data, 1, context, tensor)
  return jax.sharding.Mesh(devices, MESH_AXES)


def _close(actual, expected, rtol, what):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  error = float(np.max(np.abs(actual - expected)))
  assert error <= rtol * float(np.max(np.abs(expected))) + 1e-9, f"{what}: max error {error}"


def _in_context(mesh, fn, *args):
  """``fn(*args)`` jitted under ``mesh`` and the default rules, as the training loop runs the model."""
  with mesh, nn.logical_axis_rules(list(DEFAULT_RULES)):
    return jax.jit(fn)(*args)


MESHES = [
    pytest.param(dict(context=8), id="context8"),
    pytest.param(dict(data=2, context=4), id="data2-context4", marks=pytest.mark.slow),
    pytest.param(dict(context=4, tensor=2), id="context4-tensor2"),
]


def test_context_layout_only_with_a_context_axis_that_divides_the_length():
  def layout(length):
    found = context_parallel.context_layout(length)
    return None if found is None else (found.context, found.size)

  assert layout(16) is None  # no mesh
  with _mesh(data=8, context=1), nn.logical_axis_rules(list(DEFAULT_RULES)):
    assert layout(16) is None  # a context axis of one device
  with _mesh(data=2, context=4), nn.logical_axis_rules(list(DEFAULT_RULES)):
    assert layout(16) == (("context",), 4)
    assert layout(18) is None  # 4 does not divide 18: the ordinary ops
  with _mesh(data=2, context=4), nn.logical_axis_rules([("activation_length", None)]):
    assert layout(16) is None  # the rules keep the sequence whole


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_context_parallel_conv_matches_the_reference(mesh_shape):
  # Given x (B, T, G, c) with group-major channels, T split into shards of 5 positions, and a width-4 conv ...
  mesh = _mesh(**mesh_shape)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  length = mesh.shape["context"] * 5
  x = jax.random.normal(keys[0], (2, length, 2, 3))
  kernel, bias = jax.random.normal(keys[1], (4, 2, 3)), jax.random.normal(keys[2], (2, 3))

  def sharded(x, kernel, bias):
    layout = context_parallel.context_layout(x.shape[1])
    assert layout is not None
    return context_parallel.causal_conv1d(x, kernel, bias, layout, ("ssm_groups", None))

  def loss(fn):
    return jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=(0, 1, 2))

  # When it runs with the halo exchange ... then values and gradients equal the unsharded conv's.
  _close(_in_context(mesh, sharded, x, kernel, bias), causal_conv1d_reference(x, kernel, bias), 1e-5, "y")
  grads = _in_context(mesh, loss(sharded), x, kernel, bias)
  for name, grad, grad_ref in zip(("x", "kernel", "bias"), grads, jax.jit(loss(causal_conv1d))(x, kernel, bias)):
    _close(grad, grad_ref, 1e-4, f"d{name}")


def test_context_parallel_conv_needs_k_minus_1_positions_per_shard():
  mesh = _mesh(context=8)
  x, kernel = jnp.ones((1, 16, 3)), jnp.ones((4, 3))
  with mesh, nn.logical_axis_rules(list(DEFAULT_RULES)), pytest.raises(ValueError, match="fewer than the conv's"):
    context_parallel.causal_conv1d(x, kernel, None, context_parallel.context_layout(16), ("ssm_inner",))


@pytest.mark.parametrize("tiles", [pytest.param({}, id="whole-blocks"),
                                   pytest.param(dict(q_block=3, kv_block=2), id="tiles-3x2")])
@pytest.mark.parametrize("mesh_shape", MESHES)
def test_ring_attention_matches_the_reference(mesh_shape, tiles):
  # Given GQA q (4 heads) and k, v (2 kv heads), T split into shards of 6 positions (tiled or not) ...
  mesh = _mesh(**mesh_shape)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  length = mesh.shape["context"] * 6
  q = jax.random.normal(keys[0], (2, length, 4, 8))
  k, v = jax.random.normal(keys[1], (2, length, 2, 8)), jax.random.normal(keys[2], (2, length, 2, 8))

  def sharded(q, k, v):
    return context_parallel.causal_attention(q, k, v, context_parallel.context_layout(q.shape[1]), **tiles)

  def loss(fn):
    return jax.grad(lambda *a: jnp.sum(jnp.sin(3 * fn(*a))), argnums=(0, 1, 2))

  # When attention runs as a ring over the context shards ... then values and gradients equal the reference's.
  _close(_in_context(mesh, sharded, q, k, v), attention_reference(q, k, v), 1e-5, "out")
  grads = _in_context(mesh, loss(sharded), q, k, v)
  for name, grad, grad_ref in zip("qkv", grads, jax.jit(loss(attention_reference))(q, k, v)):
    _close(grad, grad_ref, 1e-4, f"d{name}")
