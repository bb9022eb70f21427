"""Small helpers shared by the ops in `pallas_kernels`.

- `pad_axis_to_multiple`: zero-pad one axis (the time axis T) up to a multiple of a block length (the chunk length Q).
- `check_positive_int`, `check_ndim`, `check_shape`: argument validation that raises `ValueError` naming the
  argument and the expected shape, so that a wrong call fails at trace time with a message a user can act on.
- `resolve_implementation`: turns the public `implementation=` argument into a concrete name, with `None` meaning
  "the best one for the current backend", and "pallas" meaning the native kernel of the current backend.
- `PallasTarget` / `pallas_target`: which kernel (TPU Mosaic or GPU Triton) a "pallas*" implementation name runs, and
  whether in interpret mode; `interpret_arg` is what every `pallas_call` of that target gets as `interpret=`.
- `out_struct`: the `ShapeDtypeStruct` of a kernel output, varying over the same `shard_map` axes as the inputs, so
  that kernels can be called inside `shard_map` (with `check_vma=True`, the default).
- `vary_alike`: makes arrays vary over the same `shard_map` axes, as a `custom_vjp` around a kernel needs.
- `round_up`, `next_power_of_2`: block-size arithmetic.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

__all__ = [
    "PALLAS_IMPLEMENTATIONS",
    "PallasTarget",
    "check_ndim",
    "check_positive_int",
    "check_shape",
    "next_power_of_2",
    "out_struct",
    "pad_axis_to",
    "pad_axis_to_multiple",
    "pallas_target",
    "resolve_implementation",
    "round_up",
    "vary_alike",
]

# The Pallas implementation names every op accepts. "pallas" is the native kernel of the current backend;
# "pallas_tpu" / "pallas_gpu" name a kernel explicitly (e.g. to compile ahead of time for a TPU from a CPU host);
# the "_interpret" variants run the same kernels on any backend through Pallas' interpreters.
PALLAS_IMPLEMENTATIONS = ("pallas", "pallas_tpu", "pallas_gpu", "pallas_tpu_interpret", "pallas_gpu_interpret")


def pad_axis_to_multiple(x: jax.Array, multiple: int, axis: int) -> jax.Array:
  """Zero-pads `x` at the end of `axis` so that its length is a multiple of `multiple`."""
  length = x.shape[axis]
  pad = -length % multiple
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def pad_axis_to(x: jax.Array, length: int, axis: int) -> jax.Array:
  """Zero-pads `x` at the end of `axis` up to `length` (which must be >= the current length)."""
  pad = length - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def round_up(value: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= `value`."""
  return -(-value // multiple) * multiple


def next_power_of_2(value: int) -> int:
  """The smallest power of two that is >= `value` (and >= 1)."""
  return 1 << max(0, int(value) - 1).bit_length()


def check_positive_int(name: str, value) -> int:
  """Returns `value` as an int, or raises ValueError unless it is a positive integer (bools are rejected)."""
  if isinstance(value, bool):
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  try:
    as_int = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be a positive int, got {value!r}") from None
  if as_int <= 0:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return as_int


def check_ndim(name: str, x, ndim: int, dims: str) -> None:
  """Raises ValueError unless `x` has rank `ndim`; `dims` names the axes, e.g. "(batch, seqlen, nheads)"."""
  shape = jnp.shape(x)
  if len(shape) != ndim:
    raise ValueError(f"{name} must have rank {ndim} with shape {dims}, got shape {tuple(shape)}")


def check_shape(name: str, x, expected: Sequence[int], dims: str) -> None:
  """Raises ValueError unless `x.shape == expected`; `dims` names the axes, e.g. "(batch, seqlen, nheads)"."""
  shape = tuple(jnp.shape(x))
  if shape != tuple(expected):
    raise ValueError(f"{name} must have shape {dims} = {tuple(expected)}, got shape {shape}")


def resolve_implementation(
    implementation: str | None,
    *,
    available: Sequence[str],
    defaults: Mapping[str, str],
    backend: str | None = None,
) -> str:
  """Returns the implementation to run.

  Args:
    implementation: the user's choice, or None for the default of the backend.
    available: the names this op knows.
    defaults: backend name ("cpu", "gpu", "tpu", ...) -> implementation; the key "*" is the fallback.
    backend: the backend to pick a default for (and to resolve "pallas" on); `jax.default_backend()` when None.

  Returns:
    A name from `available`; "pallas" (from the user or from `defaults`) becomes "pallas_tpu" or "pallas_gpu".

  Raises:
    ValueError: `implementation` is not None and not one of `available`, or it is "pallas" on a backend with no
      native Pallas kernel (CPU).
  """
  backend = jax.default_backend() if backend is None else backend
  if implementation is None:
    implementation = defaults.get(backend, defaults["*"])
  elif not isinstance(implementation, str) or implementation not in available:
    raise ValueError(f"implementation must be None or one of {tuple(available)}, got {implementation!r}")
  if implementation == "pallas":
    if backend not in ("tpu", "gpu"):
      raise ValueError(
          f"implementation='pallas' runs the native kernel of a TPU or GPU backend, but the current backend is "
          f"{backend!r}; use 'pallas_tpu_interpret' or 'pallas_gpu_interpret' to run the kernels in interpret mode, "
          f"or 'pallas_tpu' / 'pallas_gpu' to lower for another platform"
      )
    implementation = f"pallas_{backend}"
  return implementation


@dataclasses.dataclass(frozen=True)
class PallasTarget:
  """Which Pallas kernel to run: `platform` "tpu" (Mosaic) or "gpu" (Triton), natively or in interpret mode."""

  platform: str
  interpret: bool

  @property
  def interpret_arg(self):
    """The `interpret=` argument of `pallas_call`: TPU interpret mode (which models TPU semantics such as VMEM,
    DMAs and grid order) for the TPU kernels, the generic HLO interpreter for the GPU kernels, False natively."""
    if not self.interpret:
      return False
    return pltpu.InterpretParams() if self.platform == "tpu" else True


def pallas_target(implementation: str) -> PallasTarget | None:
  """The kernel a resolved implementation name runs ("pallas_tpu", "pallas_gpu_interpret", ...), or None for a
  jnp implementation. "pallas" must have been resolved by `resolve_implementation` first."""
  if not implementation.startswith("pallas_"):
    return None
  platform, _, mode = implementation[len("pallas_"):].partition("_")
  if platform not in ("tpu", "gpu") or mode not in ("", "interpret"):
    raise ValueError(f"not a Pallas implementation name: {implementation!r}")
  return PallasTarget(platform=platform, interpret=mode == "interpret")


def out_struct(shape: Sequence[int], dtype, *like: jax.Array) -> jax.ShapeDtypeStruct:
  """`ShapeDtypeStruct(shape, dtype)` for a `pallas_call` output computed from `like`.

  Inside `shard_map` with `check_vma=True`, Pallas needs to know over which manual mesh axes an output varies; it
  varies over every axis any of its inputs varies over. Outside `shard_map` this is a plain `ShapeDtypeStruct`.
  """
  varying = frozenset()
  for a in like:
    if a is not None:
      varying |= jax.typeof(a).manual_axis_type.varying
  return jax.ShapeDtypeStruct(tuple(shape), dtype, manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


def vary_alike(*arrays):
  """The arrays (None passes through), each marked as varying over every manual mesh axis any of them varies over.

  Inside `shard_map` an operation mixing a replicated array (say A [h], the same on every data shard) with a
  varying one (x, different per data shard) implicitly broadcasts the replicated one, and autodiff sums its
  cotangent back over the axes it was broadcast over. A `custom_vjp` rule must return cotangents typed like its
  primal inputs, so the kernels' `custom_vjp` receives inputs already broadcast here, outside of it: the sum then
  happens in JAX's own transpose of this broadcast. Outside `shard_map` this returns the arrays unchanged.
  """
  varying = frozenset()
  for a in arrays:
    if a is not None:
      varying |= jax.typeof(a).manual_axis_type.varying
  out = []
  for a in arrays:
    if a is not None:
      missing = tuple(sorted(varying - jax.typeof(a).manual_axis_type.varying))
      if missing:
        a = jax.lax.pcast(a, missing, to="varying")
    out.append(a)
  return tuple(out)


# ---------------------------------------------------------------------------------------------------------------------
# Mesh axes of the shard_map wrappers (`pallas_kernels.sharding`, the context-parallel scans).


def axis_names(entry) -> tuple[str, ...]:
  """None, a mesh axis name or a sequence of them -> a tuple of names."""
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def spec_entry(names: Sequence[str]):
  """A tuple of mesh axis names -> a `PartitionSpec` entry (None, one name, or the tuple)."""
  names = tuple(names)
  return None if not names else names[0] if len(names) == 1 else names


def shard_count(mesh, names: Sequence[str]) -> int:
  """How many shards the mesh axes `names` split a dimension into; mesh None: the context mesh (`jax.set_mesh`)."""
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  return math.prod(mesh.shape[n] for n in names)


def check_vma(implementation) -> bool:
  """`shard_map`'s ``check_vma`` for a scan implementation: off for the interpret modes, whose interpreter (jax
  0.10.2) fails on shard_map's varying-axes types ("Scan carry input and output got mismatched varying manual axes")."""
  return not (isinstance(implementation, str) and implementation.endswith("_interpret"))


def slices_groups(nheads: int, ngroups: int, head_shards: int, head_axes: Sequence[str]) -> bool:
  """Whether the SSD's B and C must be replicated over the head shards and sliced per shard (fewer groups than head
  shards) rather than sharded by whole groups; a ValueError when neither count divides the other."""
  slice_groups = ngroups % head_shards != 0
  if slice_groups and head_shards % ngroups:
    raise ValueError(f"B and C: ngroups = {ngroups} and the {head_shards} head shards of mesh axes {tuple(head_axes)} "
                     f"must divide one another, so that each shard's heads read whole groups")
  return slice_groups


def local_group(B, C, *, head_axes: Sequence[str], nheads: int, ngroups: int, head_shards: int):
  """Inside `shard_map`, with B and C replicated over the head axes: the one group this shard's heads read."""
  group = lax.axis_index(tuple(head_axes)) * (nheads // head_shards) // (nheads // ngroups)
  return lax.dynamic_slice_in_dim(B, group, 1, axis=2), lax.dynamic_slice_in_dim(C, group, 1, axis=2)
