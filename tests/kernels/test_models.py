"""Tiny Mamba-2 and Mamba-1 language models give the same loss and gradients with the Pallas kernels as with jnp.

On a (data, tensor) mesh the kernels run inside shard_map (`ssmjax.mixers.scans`) and must still agree.

The models are the `tiny_mamba2` / `tiny_mamba` presets cut to two layers (every layer adds a forward and a backward
kernel to compile, and interpret-mode compilation dominates), with the mixer's `implementation` set to a kernel in
interpret mode; the batch is 2 x 21 tokens (21 is not a multiple of tiny_mamba2's chunk of 16). Gradients are
compared for every parameter, so the kernels' backward passes are checked through the whole model: dt_bias and A_log
(through dt and A), D, the conv and in_proj (through x, B, C), and the layers below each mixer.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssmjax
from ssmjax import presets

_FAST_COMPILE = {"xla_backend_optimization_level": 0}  # interpret-mode programs: compile time dominates

# (preset, config field, jnp implementation, kernel implementation)
CASES = [
    pytest.param("tiny_mamba2", "mamba2", "chunked", "pallas_gpu_interpret", id="mamba2-gpu-kernel"),
    pytest.param("tiny_mamba", "mamba1", "associative", "pallas_gpu_interpret", id="mamba1-gpu-kernel"),
    pytest.param("tiny_mamba2", "mamba2", "chunked", "pallas_tpu_interpret", id="mamba2-tpu-kernel"),
    pytest.param("tiny_mamba", "mamba1", "associative", "pallas_tpu_interpret", id="mamba1-tpu-kernel",
                 marks=pytest.mark.slow),
]


def _config(preset, field, implementation):
  config = presets.get(preset).replace(pattern="MM")
  return config.replace(**{field: dataclasses.replace(getattr(config, field), implementation=implementation)})


def _loss_fn(config, ids):
  model = ssmjax.LanguageModel(config)

  def loss_fn(p):
    logits = model.apply({"params": p}, ids)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

  return loss_fn


def _loss_and_grads(config, params, ids):
  return jax.jit(jax.value_and_grad(_loss_fn(config, ids)), compiler_options=_FAST_COMPILE)(params)


@functools.cache
def _jnp_run(preset, field, jnp_implementation):
  """(params, ids, loss, grads) of the model with the jnp scan; shared by the kernels' tests."""
  config = _config(preset, field, jnp_implementation)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 21), 0, config.vocab_size)
  init = jax.jit(ssmjax.LanguageModel(config).init, compiler_options=_FAST_COMPILE)
  params = init(jax.random.PRNGKey(0), ids)["params"]
  return (params, ids, *_loss_and_grads(config, params, ids))


@pytest.mark.parametrize("preset, field, jnp_implementation, kernel", CASES)
def test_model_loss_and_gradients_match_the_jnp_path(preset, field, jnp_implementation, kernel):
  # Given a tiny model's parameters and a batch, and the loss and gradients with the jnp scan ...
  params, ids, loss, grads = _jnp_run(preset, field, jnp_implementation)
  # ... when the loss is differentiated with the kernel ...
  kernel_loss, kernel_grads = _loss_and_grads(_config(preset, field, kernel), params, ids)
  # ... then the losses and every parameter's gradient agree.
  np.testing.assert_allclose(float(kernel_loss), float(loss), rtol=1e-6)
  flat = dict(jax.tree_util.tree_leaves_with_path(grads))
  for path, kernel_grad in jax.tree_util.tree_leaves_with_path(kernel_grads):
    grad = np.asarray(flat[path], np.float64)
    error = float(np.max(np.abs(np.asarray(kernel_grad, np.float64) - grad)))
    assert error <= 1e-4 * float(np.max(np.abs(grad))) + 1e-9, f"{jax.tree_util.keystr(path)}: {error}"
  assert jnp.isfinite(kernel_loss)


# (preset, config field, jnp implementation, kernel implementation) on a (data 4, tensor 2) mesh.
MESH_CASES = [
    pytest.param("tiny_mamba2", "mamba2", "chunked", "pallas_tpu_interpret", id="mamba2-tpu-kernel"),
    pytest.param("tiny_mamba", "mamba1", "associative", "pallas_gpu_interpret", id="mamba1-gpu-kernel"),
]


@pytest.mark.parametrize("preset, field, jnp_implementation, kernel", MESH_CASES)
def test_model_on_a_mesh_runs_the_kernels_per_shard_and_matches_one_device(preset, field, jnp_implementation, kernel):
  import flax.linen as nn

  from ssmjax.sharding import MeshConfig, make_mesh

  # Given a batch of 4 x 21 tokens and the loss and gradients of the jnp model on one device ...
  config = _config(preset, field, jnp_implementation)
  ids = jax.random.randint(jax.random.PRNGKey(2), (4, 21), 0, config.vocab_size)
  params = jax.jit(ssmjax.LanguageModel(config).init)(jax.random.PRNGKey(0), ids)["params"]
  loss, grads = _loss_and_grads(config, params, ids)
  # ... when the kernel model is differentiated under a (data 4, tensor 2) mesh and the default logical-axis rules ...
  mesh_config = MeshConfig(data=4, fsdp=1, tensor=2)
  mesh, kernel_config = make_mesh(mesh_config), _config(preset, field, kernel)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(mesh_config.resolved_rules())):
    jaxpr = jax.make_jaxpr(jax.value_and_grad(_loss_fn(kernel_config, ids)))(params)
    kernel_loss, kernel_grads = _loss_and_grads(kernel_config, params, ids)
  # ... then the kernels ran inside shard_map on batch x heads (channels) shards, and the loss and every gradient
  # equal the one-device jnp ones.
  assert "in_specs=(P(('data', 'fsdp'), None, 'tensor'" in str(jaxpr)
  np.testing.assert_allclose(float(kernel_loss), float(loss), rtol=1e-6)
  flat = dict(jax.tree_util.tree_leaves_with_path(grads))
  for path, kernel_grad in jax.tree_util.tree_leaves_with_path(kernel_grads):
    grad = np.asarray(flat[path], np.float64)
    error = float(np.max(np.abs(np.asarray(kernel_grad, np.float64) - grad)))
    assert error <= 1e-4 * float(np.max(np.abs(grad))) + 1e-9, f"{jax.tree_util.keystr(path)}: {error}"
