"""Creating parameters with logical axis names, and the initialisers the reference implementations use."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int], axes: Sequence[str | None],
          dtype) -> jax.Array:
  """``module.param`` with logical axis names attached (one name per dimension)."""
  if len(axes) != len(shape):
    raise ValueError(f"parameter {name!r}: {len(axes)} axis names {tuple(axes)} for shape {tuple(shape)}")
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


def torch_default_uniform(fan_in: int) -> Initializer:
  """PyTorch's default ``nn.Linear`` / ``nn.Conv1d`` init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), +)."""
  return uniform(1.0 / math.sqrt(fan_in))


def uniform(bound: float) -> Initializer:
  """U(-bound, bound)."""

  def uniform_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return uniform_init


def normal(std: float) -> Initializer:
  return nn.initializers.normal(stddev=std)


def scaled(init: Initializer, factor: float) -> Initializer:
  """``init`` multiplied by ``factor`` (mamba_ssm rescales out_proj after its default init)."""

  def scaled_init(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype) * factor

  return scaled_init


@dataclasses.dataclass(frozen=True)
class Inits:
  """The initialisers of one model, by role (SPEC §4.4, §4.5).

  ``megatron``: dense layers N(0, std); a Mamba out_proj N(0, std / sqrt(L)); an attention or MLP output projection
  N(0, std / sqrt(2 L)) (``scaled_init_method_normal``). ``mamba_ssm``: PyTorch's default uniform, with every residual
  output projection (out_proj, fc2) divided by sqrt(L). L is the number of sub-blocks (Megatron's layer count, and
  mamba_ssm's n_residuals_per_layer x n_layer). Mamba input projections use PyTorch's default in both.
  """

  style: str
  std: float
  num_layers: int

  def dense(self, fan_in: int) -> Initializer:
    return normal(self.std) if self.style == "megatron" else torch_default_uniform(fan_in)

  def residual_out(self, fan_in: int, *, mamba: bool) -> Initializer:
    if self.style == "megatron":
      return normal(self.std / math.sqrt(self.num_layers if mamba else 2 * self.num_layers))
    return scaled(torch_default_uniform(fan_in), 1.0 / math.sqrt(self.num_layers))

  def embedding(self) -> Initializer:
    return normal(self.std)
