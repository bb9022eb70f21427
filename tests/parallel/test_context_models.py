"""Context-parallel training: the loss and gradients of tiny models with the sequence split over devices equal the
unsharded computation.

On 8 virtual CPU devices with mesh (context 8) and (data 2, context 4), tiny Mamba-2, Transformer (RoPE) and hybrid
models (Mamba-1 under -m slow) are differentiated under the training loop's ``jax.set_mesh`` and logical-axis rules, the
batch sharded as `ssmjax.sharding.batch_spec` says (its length over ``context``). The sequence is 96 tokens: shards of
12 (context 8) or 24 (context 4), neither a multiple of the Mamba-2 chunk of 16. Tolerance (float32): loss relative
1e-5, each parameter's gradient within 1e-4 of its largest entry (observed ~1e-7 and ~1e-6: the context-parallel
ops only reorder float32 sums). The jaxpr is checked for the ops' collectives, so the test fails if the model silently
ran the unsplit path.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import ssmjax
from ssmjax import presets
from ssmjax.sharding import MeshConfig, batch_spec, make_mesh

LENGTH = 96
_FAST_COMPILE = {"xla_backend_optimization_level": 0}  # tiny programs: compile time dominates


def _loss_fn(config, ids):
  model = ssmjax.LanguageModel(config)
  targets = jnp.roll(ids, -1, axis=1)
  mask = jnp.ones(ids.shape, jnp.float32).at[:, -1].set(0.0)

  def loss(params):
    logits = model.apply({"params": params}, ids)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask) / jnp.sum(mask)

  return loss


@functools.cache
def _unsharded(preset):
  """(config, params, ids, loss, grads) on one device, without a mesh."""
  config = presets.get(preset)
  ids = jax.random.randint(jax.random.PRNGKey(3), (2, LENGTH), 0, config.vocab_size)
  params = jax.jit(ssmjax.LanguageModel(config).init)(jax.random.PRNGKey(0), ids)["params"]
  params = nn.meta.unbox(params)
  loss, grads = jax.jit(lambda p, i: jax.value_and_grad(_loss_fn(config, i))(p),
                        compiler_options=_FAST_COMPILE)(params, ids)
  return config, params, ids, loss, grads


# Collectives each model's context-parallel ops leave in the jaxpr: the scans' all-gather of (state, decay), the
# conv's and the ring attention's ppermute.
# The default run covers both meshes with the hybrid (Mamba-2, attention and MLP layers) and the Transformer (RoPE) on
# one; -m slow runs every (model, mesh) pair, Mamba-2 and Mamba-1 included.
CONTEXT8, DATA2_CONTEXT4 = MeshConfig(data=1, context=8), MeshConfig(data=2, context=4)
SLOW = pytest.mark.slow
CASES = [
    pytest.param("tiny_hybrid", ("all_gather", "ppermute"), CONTEXT8, id="hybrid-context8"),
    pytest.param("tiny_hybrid", ("all_gather", "ppermute"), DATA2_CONTEXT4, id="hybrid-data2-context4"),
    pytest.param("tiny_mamba2", ("all_gather", "ppermute"), CONTEXT8, id="mamba2-context8", marks=SLOW),
    pytest.param("tiny_mamba2", ("all_gather", "ppermute"), DATA2_CONTEXT4, id="mamba2-data2-context4", marks=SLOW),
    pytest.param("tiny_transformer", ("ppermute",), CONTEXT8, id="transformer-context8", marks=SLOW),
    pytest.param("tiny_transformer", ("ppermute",), DATA2_CONTEXT4, id="transformer-data2-context4"),
    pytest.param("tiny_mamba", ("all_gather", "ppermute"), CONTEXT8, id="mamba1-context8", marks=SLOW),
    pytest.param("tiny_mamba", ("all_gather", "ppermute"), DATA2_CONTEXT4, id="mamba1-data2-context4", marks=SLOW),
]


@pytest.mark.parametrize("preset, collectives, mesh_config", CASES)
def test_context_parallel_loss_and_gradients_equal_one_device(preset, collectives, mesh_config):
  # Given a tiny model's parameters, a batch and its unsharded loss and gradients ...
  config, params, ids, loss, grads = _unsharded(preset)
  # ... when the loss is differentiated on a mesh whose context axis splits the sequence ...
  mesh = make_mesh(mesh_config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(mesh_config.resolved_rules())):  # as ssmjax.train.train
    sharded_ids = jax.device_put(ids, NamedSharding(mesh, batch_spec()))
    fn = jax.jit(lambda p, i: jax.value_and_grad(_loss_fn(config, i))(p),
                 in_shardings=(NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, batch_spec())))
    traced = fn.trace(params, sharded_ids)
    jaxpr = str(traced.jaxpr)
    cp_loss, cp_grads = traced.lower().compile(_FAST_COMPILE)(params, sharded_ids)
  # ... then it ran the context-parallel ops, and the loss and every gradient equal the unsharded ones.
  for collective in collectives:
    assert collective in jaxpr, f"no {collective} in the jaxpr: the context-parallel path did not run"
  np.testing.assert_allclose(float(cp_loss), float(loss), rtol=1e-5)
  flat = dict(jax.tree_util.tree_leaves_with_path(grads))
  for path, cp_grad in jax.tree_util.tree_leaves_with_path(cp_grads):
    grad = np.asarray(flat[path], np.float64)
    error = float(np.max(np.abs(np.asarray(cp_grad, np.float64) - grad)))
    assert error <= 1e-4 * float(np.max(np.abs(grad))) + 1e-9, f"{jax.tree_util.keystr(path)}: {error}"
