"""Assembling converted parameters one sub-tree at a time: shape checks, dtype casts and device placement per leaf.

Every converter hands each converted layer to `ParamBuilder.add` as soon as it is built. The builder checks each leaf
against the shapes of ``LanguageModel(config)``, casts it, and places it (on the devices of a mesh, sharded by the
parameters' logical axis names, when one is given), so the NumPy copies of a layer are freed before the next layer is
read: converting holds the converted model plus about one layer of temporaries, never the source model as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssmjax.config import ModelConfig
from ssmjax.convert.tensors import TensorSource
from ssmjax.sharding import DEFAULT_RULES

# A conversion plan: (parameter sub-tree name, function that reads and converts it), run in order by `build`.
Plan = list[tuple[str, Callable[[], Any]]]


@dataclasses.dataclass
class Conversion:
  """An opened foreign checkpoint: the model config, where its tensors are, and the plan that converts them.

  ``info`` holds facts for the converted checkpoint's ``convert_info.json`` (format, unpadded vocab size, ...).
  """

  config: ModelConfig
  source: TensorSource
  plan: Plan
  info: dict = dataclasses.field(default_factory=dict)

  def build(self, dtype: str | None = None, mesh: jax.sharding.Mesh | None = None,
            rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> dict:
    return build(self.config, self.source, self.plan, dtype=dtype, mesh=mesh, rules=rules)


# ``dtype="source"``: keep each tensor's stored dtype (a bfloat16 release stays bfloat16).
SOURCE_DTYPE = "source"


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> ``{"a/b/c": leaf}``."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    flat.update(flatten(value, name + "/") if isinstance(value, dict) else {name: value})
  return flat


def unflatten(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def boxed_abstract_params(config: ModelConfig) -> Any:
  """``LanguageModel(config)``'s parameters as shapes, still boxed with their logical axis names."""
  from ssmjax.models.lm import LanguageModel

  variables = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  return variables["params"]


def param_shardings(config: ModelConfig, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> dict[str, jax.sharding.NamedSharding]:
  """``{"layers_0/mixer/in_proj": NamedSharding}`` from the logical axis names and ``rules``."""
  specs = nn.get_partition_spec(boxed_abstract_params(config))
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))
  return {_path_name(path): s for path, s in jax.tree_util.tree_leaves_with_path(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))}


class ParamBuilder:
  """Collects a model's parameters sub-tree by sub-tree; `finish` returns the nested tree of jax arrays.

  ``dtype``: None for ``config.param_dtype``, `SOURCE_DTYPE` to keep each tensor's stored dtype, or a dtype name.
  ``mesh``: place each parameter on it, sharded by ``rules`` (`ssmjax.sharding.DEFAULT_RULES` by default); without
  one, on the default device. (Keeping NumPy arrays instead was measured to make orbax's save use more memory.)
  """

  def __init__(self, config: ModelConfig, source: TensorSource, dtype: str | None = None,
               mesh: jax.sharding.Mesh | None = None, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
    self.config, self.source = config, source
    self.dtype = None if dtype == SOURCE_DTYPE else jnp.dtype(dtype or config.param_dtype)
    boxed = boxed_abstract_params(config)
    self.expected = {_path_name(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(
        nn.meta.unbox(boxed))}
    self.shardings = param_shardings(config, mesh, rules) if mesh is not None else None
    self._params: dict[str, Any] = {}

  def add(self, name: str, build: Callable[[], dict] | dict) -> None:
    """Convert and store the sub-tree ``name`` (e.g. ``"layers_3"``); ``build`` makes it (a dict of arrays)."""
    self.source.recent()
    try:
      subtree = build() if callable(build) else build
    except ValueError as e:
      raise ValueError(f"converting checkpoint tensors {self.source.recent()} to parameters {name}/: {e}") from e
    keys = self.source.recent()
    leaves = flatten(subtree, name + "/") if isinstance(subtree, dict) else {name: subtree}
    for path, value in leaves.items():
      if path not in self.expected:
        raise ValueError(f"the conversion made a parameter {path} that {self._model()} does not have (from "
                         f"checkpoint tensors {keys})")
      if tuple(np.shape(value)) != tuple(self.expected[path]):
        raise ValueError(f"parameter {path} has shape {tuple(np.shape(value))}, expected {tuple(self.expected[path])} "
                         f"for {self._model()} (from checkpoint tensors {keys})")
      if path in self._params:
        raise ValueError(f"parameter {path} converted twice")
    for path, value in leaves.items():
      self._params[path] = self._place(path, value)

  def _model(self) -> str:
    return f"the model (pattern {self.config.pattern!r}, d_model {self.config.d_model})"

  def _place(self, path: str, value: np.ndarray) -> jax.Array:
    value = np.asarray(value)
    if self.dtype is not None and value.dtype != self.dtype:
      value = value.astype(self.dtype)
    if self.shardings is not None:
      return jax.device_put(value, self.shardings[path])
    return jnp.asarray(value)

  def finish(self, check_unused: bool = True) -> dict:
    missing = [f"{path} {self.expected[path]}" for path in self.expected if path not in self._params]
    if missing:
      raise ValueError(f"the conversion did not produce these parameters of {self._model()}: {missing}")
    if check_unused:
      unused = self.source.unused()
      if unused:
        raise ValueError(f"tensors of the {self.source.description} not used by the conversion: {unused}")
    return unflatten(self._params)


def build(config: ModelConfig, source: TensorSource, plan: Plan, dtype: str | None = None,
          mesh: jax.sharding.Mesh | None = None, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> dict:
  """Run a conversion plan into a checked parameter tree (see `ParamBuilder`)."""
  builder = ParamBuilder(config, source, dtype=dtype, mesh=mesh, rules=rules)
  for name, make in plan:
    builder.add(name, make)
  return builder.finish()
