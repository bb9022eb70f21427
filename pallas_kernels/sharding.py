"""Running `ssd` and `selective_scan` on a device mesh: `shard_map` with specs taken from the inputs' shardings.

Pallas kernels cannot be partitioned by XLA: called on sharded inputs under `jit` they would be gathered onto
every device first. `ssd_sharded` and `selective_scan_sharded` instead run the op inside `jax.shard_map`, each device
on its own shard, so a model compiled on a mesh calls the kernels without gathers. Every axis the scans run over is
independent except time, so the supported layouts shard

  ssd             batch (e.g. over ("data", "fsdp")) and heads (e.g. over "tensor"); B and C by whole groups when
                  the head shards hold whole groups, else (fewer groups than head shards) replicated over the head
                  axes, each device slicing out the one group its heads read;
  selective_scan  batch and channels (d_inner); B and C (shared by all channels) replicated over the channel axes.

The time axis and the head / state dims must not be sharded. Which mesh axes shard batch and heads is read from
`x`'s (`u`'s) sharding: a `NamedSharding` of a concrete array, or the sharding of a traced one on a mesh with
explicit axes (`jax.sharding.AxisType.Explicit`). Under `jit` on a mesh with automatic axes shardings are not
visible while tracing; pass `batch_axes` and `head_axes` (`channel_axes`) then, e.g. from the logical-axis rules.
The gradients of replicated inputs (A, D, ...) are summed over the shards by JAX's `shard_map` transpose.

The interpret-mode implementations run with `check_vma=False`: Pallas' interpreter for the GPU kernels (jax 0.10.2)
fails on the varying-axes types of `shard_map` ("Scan carry input and output got mismatched varying manual axes");
the native kernels run with the default checks.
"""

from __future__ import annotations


import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels import common
from pallas_kernels.selective_scan.api import selective_scan
from pallas_kernels.ssd.api import ssd

__all__ = ["selective_scan_sharded", "ssd_sharded"]

_FROM_INPUT = object()  # sentinel: read the axes from the input's sharding


def _input_layout(a):
  """(mesh, spec) of `a` if its sharding is known (a concrete array, or traced on a mesh with explicit axes)."""
  if isinstance(a, jax.core.Tracer):
    sharding = jax.typeof(a).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or any(t != jax.sharding.AxisType.Explicit for t in mesh.axis_types):
      return None
    return mesh, sharding.spec
  sharding = getattr(a, "sharding", None)
  if isinstance(sharding, NamedSharding):
    return sharding.mesh, sharding.spec
  return None


def _resolve_axes(a, name: str, mesh, batch_axes, inner_axes, inner_dim: int, inner_name: str):
  """Returns (mesh or None for the context mesh, batch axis names, inner (heads / channels) axis names)."""
  layout = _input_layout(a)
  if batch_axes is _FROM_INPUT or inner_axes is _FROM_INPUT:
    if layout is None:
      raise ValueError(
          f"cannot read the sharding of {name}: pass batch_axes and {inner_name}_axes (the mesh axes that shard the "
          f"batch and the {inner_name} of {name}), or call with a concrete array with a NamedSharding or on a mesh "
          f"with explicit axes"
      )
    spec = tuple(layout[1]) + (None,) * (a.ndim - len(layout[1]))
    sharded_others = [d for d, entry in enumerate(spec) if entry is not None and d not in (0, inner_dim)]
    if sharded_others:
      raise ValueError(
          f"{name} may be sharded over batch (dim 0) and {inner_name} (dim {inner_dim}) only, got sharding spec "
          f"{layout[1]} (sequence parallelism is not supported)"
      )
    if batch_axes is _FROM_INPUT:
      batch_axes = spec[0]
    if inner_axes is _FROM_INPUT:
      inner_axes = spec[inner_dim]
  if mesh is None and layout is not None:
    mesh = layout[0]
  return mesh, common.axis_names(batch_axes), common.axis_names(inner_axes)


def ssd_sharded(x, dt, A, B, C, *, chunk_size, mesh=None, batch_axes=_FROM_INPUT, head_axes=_FROM_INPUT, D=None,
                z=None, dt_bias=None, initial_state=None, return_final_state=False, **kwargs):
  """`pallas_kernels.ssd` inside `shard_map`, batch and heads sharded as `x` is (see the module docstring).

  Args:
    x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, return_final_state: as `pallas_kernels.ssd`.
    mesh: the mesh; None: `x`'s, else the context mesh (`jax.set_mesh`).
    batch_axes, head_axes: mesh axis names (None, a name or a tuple) sharding the batch and the heads; read from
      `x`'s sharding when not given.
    **kwargs: the other keyword arguments of `pallas_kernels.ssd` (dt_softplus, dt_limit, implementation, ...).

  Raises:
    ValueError: the shardings cannot be read or are not supported, or the head shards split a B/C group unevenly.
  """
  mesh, batch, heads = _resolve_axes(x, "x", mesh, batch_axes, head_axes, 2, "head")
  nheads, ngroups = x.shape[2], B.shape[2]
  head_shards = common.shard_count(mesh, heads)
  if nheads % head_shards:
    raise ValueError(f"x: nheads = {nheads} is not divisible by the {head_shards} shards of mesh axes {heads}")
  slice_groups = common.slices_groups(nheads, ngroups, head_shards, heads)
  b, h = common.spec_entry(batch), common.spec_entry(heads)
  bthp, bth, hh, bhpn = P(b, None, h, None), P(b, None, h), P(h), P(b, h, None, None)
  btgn = P(b, None, None, None) if slice_groups else P(b, None, h, None)

  def local(x, dt, A, B, C, D, z, dt_bias, initial_state):
    if slice_groups:
      B, C = common.local_group(B, C, head_axes=heads, nheads=nheads, ngroups=ngroups, head_shards=head_shards)
    return ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state,
               return_final_state=True, **kwargs)

  optional = lambda a, spec: None if a is None else spec  # noqa: E731
  in_specs = (bthp, bth, hh, btgn, btgn, optional(D, hh), optional(z, bthp), optional(dt_bias, hh),
              optional(initial_state, bhpn))
  check_vma = common.check_vma(kwargs.get("implementation"))
  y, final_state = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(bthp, bhpn),
                                 check_vma=check_vma)(x, dt, A, B, C, D, z, dt_bias, initial_state)
  return (y, final_state) if return_final_state else y


def selective_scan_sharded(u, delta, A, B, C, *, mesh=None, batch_axes=_FROM_INPUT, channel_axes=_FROM_INPUT,
                           D=None, z=None, delta_bias=None, initial_state=None, return_final_state=False, **kwargs):
  """`pallas_kernels.selective_scan` inside `shard_map`, batch and channels sharded as `u` is.

  Args:
    u, delta, A, B, C, D, z, delta_bias, initial_state, return_final_state: as `pallas_kernels.selective_scan`.
    mesh, batch_axes: as `ssd_sharded`. channel_axes: mesh axes sharding d_inner; read from `u` when not given.
    **kwargs: the other keyword arguments of `pallas_kernels.selective_scan` (delta_softplus, implementation, ...).
  """
  mesh, batch, channels = _resolve_axes(u, "u", mesh, batch_axes, channel_axes, 2, "channel")
  d_inner, shards = u.shape[2], common.shard_count(mesh, channels)
  if d_inner % shards:
    raise ValueError(f"u: d_inner = {d_inner} is not divisible by the {shards} shards of mesh axes {channels}")
  b, e = common.spec_entry(batch), common.spec_entry(channels)
  bte, en, btn, ee, ben = P(b, None, e), P(e, None), P(b, None, None), P(e), P(b, e, None)

  def local(u, delta, A, B, C, D, z, delta_bias, initial_state):
    return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state,
                          return_final_state=True, **kwargs)

  optional = lambda a, spec: None if a is None else spec  # noqa: E731
  in_specs = (bte, bte, en, btn, btn, optional(D, ee), optional(z, bte), optional(delta_bias, ee),
              optional(initial_state, ben))
  check_vma = common.check_vma(kwargs.get("implementation"))
  y, final_state = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(bte, ben),
                                 check_vma=check_vma)(u, delta, A, B, C, D, z, delta_bias, initial_state)
  return (y, final_state) if return_final_state else y
