"""Logical axis names for parameters and activations, and the default rules that map them onto a mesh.

Every parameter is created with a tuple of logical names (``nn.with_logical_partitioning``) and the main activations
are constrained by name (`constrain`). Which mesh axis a name lands on is config, not code: `DEFAULT_RULES` maps the
names onto the ``("data", "fsdp", "context", "tensor")`` mesh; pass other rules to ``nn.logical_axis_rules`` to change
it. The ``context`` axis splits the sequence (``activation_length``): context parallelism, which the mixers run with
the sequence-parallel scans, conv and attention of `ssmjax.context_parallel` when it has more than one device.

`MeshConfig` is a run's mesh shape (with -1 auto-fill over the devices of all hosts) and its rules; `make_mesh` builds
the mesh, `logical_to_sharding` turns logical specs into shardings and `check_divisible` names any array the mesh
cannot split evenly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"  # d_model
MLP_HIDDEN = "mlp"  # MLP hidden size
HEADS = "heads"  # attention query heads
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
SSM_INNER = "ssm_inner"  # Mamba d_inner channels (heads x head dim for Mamba-2)
SSM_HEADS = "ssm_heads"  # Mamba-2 heads
SSM_GROUPS = "ssm_groups"  # Mamba-2 B/C groups; the fused in_proj and the conv are laid out group-major
SSM_STATE = "ssm_state"  # d_state
CONV_KERNEL = "conv_kernel"
# Activation axes.
BATCH = "activation_batch"
LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_VOCAB = "activation_vocab"

# Mesh axes, outermost first: tensor parallelism (the most communication) innermost, context next to it.
CONTEXT = "context"
MESH_AXES = ("data", "fsdp", CONTEXT, "tensor")

# One rule per logical name. Parameters: FSDP shards d_model, tensor parallelism shards heads / channels / vocab.
# Activations: the batch over data x fsdp, the sequence over context (a no-op while the context axis has size 1).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (MLP_HIDDEN, "tensor"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (HEAD_DIM, None),
    (SSM_INNER, "tensor"),
    (SSM_HEADS, "tensor"),
    (SSM_GROUPS, "tensor"),
    (SSM_STATE, None),
    (CONV_KERNEL, None),
    (BATCH, ("data", "fsdp")),
    (LENGTH, CONTEXT),
    (ACT_EMBED, None),
    (ACT_VOCAB, "tensor"),
)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrain an activation's sharding by logical names; a no-op outside a mesh + rules context."""
  return nn.with_logical_constraint(x, tuple(names))


# ---------------------------------------------------------------------------------------------------------------------
# Meshes and rules from config.

LOGICAL_NAMES = tuple(name for name, _ in DEFAULT_RULES)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh ``(data, fsdp, context, tensor)`` and the logical-axis rules of a run.

  ``data``: pure data parallelism (parameters replicated); ``fsdp``: data parallelism with parameters and optimizer
  state sharded over d_model (``embed``); ``context``: context (sequence) parallelism, each device holding a contiguous
  part of every sequence (parameters replicated over it); ``tensor``: tensor parallelism over heads / groups / channels
  / vocab. The batch is split over ``data x fsdp``, its length over ``context``. One axis may be -1: it takes all the
  devices the others leave, over all hosts. ``context`` is a keyword after ``tensor``, so that ``MeshConfig(d, f, t)``
  keeps its meaning.
  ``rule_overrides`` replaces the mesh axes of some logical names of `DEFAULT_RULES`, e.g.
  ``(("embed", None),)`` to keep d_model unsharded; ``rules`` (all of them) replaces the defaults entirely.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  context: int = 1
  rule_overrides: tuple[tuple[str, Any], ...] = ()
  rules: tuple[tuple[str, Any], ...] | None = None

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """The sizes in `MESH_AXES` order: (data, fsdp, context, tensor)."""
    return (self.data, self.fsdp, self.context, self.tensor)

  def resolved_rules(self) -> tuple[tuple[str, Any], ...]:
    """The rules in force: ``rules`` or the defaults, with ``rule_overrides`` applied; validated."""
    base = dict(DEFAULT_RULES if self.rules is None else _canonical(self.rules, "rules"))
    overrides = dict(_canonical(self.rule_overrides, "rule_overrides"))
    unknown = sorted(set(base) - set(LOGICAL_NAMES)) + sorted(set(overrides) - set(base))
    if unknown:
      raise ValueError(f"unknown logical axis names {unknown} in the mesh rules; known names: {list(LOGICAL_NAMES)}")
    base.update(overrides)
    for name, axes in base.items():
      for axis in (axes if isinstance(axes, tuple) else (axes,)):
        if axis is not None and axis not in MESH_AXES:
          raise ValueError(f"rule for {name!r} maps to unknown mesh axis {axis!r}; mesh axes are {MESH_AXES}")
    return tuple(base.items())


def _canonical(rules, what: str) -> list[tuple[str, Any]]:
  """Rules as (name, None | axis | tuple of axes) pairs (gin and JSON give lists); a repeated name is an error."""
  out, seen = [], set()
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"{what}: each rule is a (logical name, mesh axes) pair, got {rule!r}")
    name, axes = rule
    if name in seen:
      raise ValueError(f"{what}: logical name {name!r} has more than one rule")
    seen.add(name)
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return out


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """``shape`` with its one -1 filled so that the product is ``num_devices``; a clear error otherwise."""
  shape = tuple(int(s) for s in shape)
  named = ", ".join(f"{axis}={size}" for axis, size in zip(MESH_AXES, shape))
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh ({named}): axis sizes must be positive or -1 (fill), got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh ({named}): at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh ({named}) does not match the device count: the fixed axes need a multiple of {known} "
                       f"devices, but there are {num_devices}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  elif known != num_devices:
    raise ValueError(f"mesh ({named}) has {known} devices but there are {num_devices} devices; make the product of "
                     f"the axes {num_devices} or set one axis to -1")
  return shape


def make_mesh(config: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
  """The ``(data, fsdp, context, tensor)`` mesh over ``devices`` (default: all devices of all processes).

  ``mesh_utils.create_device_mesh`` orders devices by the physical topology on TPUs (and works for the abstract
  devices of `jax.experimental.topologies`); elsewhere devices keep their order, which puts each process's devices
  next to each other along the batch axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(config.shape, len(devices))
  try:
    device_grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (AssertionError, NotImplementedError, ValueError):  # shapes the topology-aware layout cannot place.
    device_grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(device_grid, MESH_AXES)


def batch_spec(shard_length: bool = True) -> PartitionSpec:
  """The batch of a train step, (batch, length): batch over ``data x fsdp`` and length over ``context``, as the
  ``activation_batch`` and ``activation_length`` rules (``shard_length=False``: the length unsplit, for inputs whose
  length the context axis may not divide)."""
  return PartitionSpec(("data", "fsdp"), CONTEXT if shard_length else None)


def logical_to_sharding(specs: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """A tree of logical ``PartitionSpec`` s (``nn.get_partition_spec``) -> the tree of ``NamedSharding`` s."""
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def check_divisible(abstract: Any, shardings: Any) -> None:
  """Raise ValueError naming the first array whose dimension is not divisible by its mesh axes."""
  def check(path, leaf, sharding):
    if not isinstance(sharding, NamedSharding):
      return
    for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(sharding.spec) + (None,) * leaf.ndim)):
      axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      parts = math.prod(sharding.mesh.shape[a] for a in axes)
      if size % parts:
        raise ValueError(f"{jax.tree_util.keystr(path)}: dimension {dim} has size {size}, not divisible by the "
                         f"{parts} devices of mesh axes {axes} (shape {tuple(leaf.shape)}, spec {sharding.spec}); "
                         f"change the mesh or the rules (MeshConfig.rule_overrides)")

  jax.tree_util.tree_map_with_path(check, abstract, shardings)
