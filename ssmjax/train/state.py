"""The train state (step, fp32 parameters, optimizer state, RNG key), its shardings, and its sharded initialisation.

Shardings come from the logical axis names the model gives every parameter: ``nn.get_partition_spec`` of the
abstract (``jax.eval_shape``) parameters, mapped through the run's rules onto the mesh. The optimizer state mirrors
them: each parameter-shaped part of it (Adam's moments) takes its parameter's sharding
(``optax.tree_map_params``); counters are replicated. Nothing is allocated before the shardings are known: the
state is created by a jitted init with those shardings as its outputs, so each device only ever holds its shard.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssmjax.config import ModelConfig
from ssmjax.models.lm import LanguageModel
from ssmjax.sharding import check_divisible, logical_to_sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: Any  # float32 master weights (ModelConfig.param_dtype); the model casts to ModelConfig.dtype to compute.
  opt_state: Any
  rng: jax.Array  # uint32 (2,) raw PRNG key, split every step for stochastic layers.


def _boxed_abstract_params(config: ModelConfig) -> Any:
  model = LanguageModel(config)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]


def param_logical_specs(config: ModelConfig) -> Any:
  """The tree of logical ``PartitionSpec`` s of the parameters, e.g. ``PartitionSpec('embed', 'mlp')``."""
  return nn.get_partition_spec(_boxed_abstract_params(config))


def init_params(config: ModelConfig, rng: jax.Array) -> Any:
  """Parameters of ``LanguageModel(config)`` without the logical-axis boxes."""
  model = LanguageModel(config)
  return nn.meta.unbox(model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"])


def abstract_state(config: ModelConfig, optimizer: optax.GradientTransformation) -> TrainState:
  """The state's shapes and dtypes (``jax.ShapeDtypeStruct`` leaves), allocating nothing."""

  def init(rng):
    params = init_params(config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng)

  return jax.eval_shape(init, jax.random.PRNGKey(0))


def state_shardings(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules) -> TrainState:
  """The ``NamedSharding`` of every leaf of the train state on ``mesh`` under ``rules``.

  Raises ValueError naming the parameter when a mesh axis does not divide the dimension it shards.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  params = logical_to_sharding(param_logical_specs(config), mesh, rules)
  abstract = abstract_state(config, optimizer)
  check_divisible(abstract.params, params)
  opt_state = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract.opt_state, params,
                                    transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)


def make_init_fn(config: ModelConfig, optimizer: optax.GradientTransformation,
                 shardings: TrainState) -> Callable[[jax.Array], TrainState]:
  """A jitted ``init(seed) -> TrainState`` that creates the state directly in ``shardings`` (parameters from a key
  split off ``seed``, the rest of it the step RNG)."""

  def init(seed):
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = init_params(config, init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=step_rng)

  return jax.jit(init, out_shardings=shardings)


def create_state(config: ModelConfig, optimizer: optax.GradientTransformation, shardings: TrainState,
                 seed: int) -> TrainState:
  """A fresh state from ``seed``, created directly in ``shardings`` (see `make_init_fn`)."""
  return make_init_fn(config, optimizer, shardings)(seed)
