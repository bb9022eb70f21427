"""How the mixers call the scans: `pallas_kernels.ssd` / `selective_scan`, inside `shard_map` on a device mesh.

XLA partitions the jnp implementations like any other op, but it cannot partition a Pallas kernel: called on sharded
operands under `jit`, a kernel would see them gathered onto every device (and Mosaic kernels must sit inside
`shard_map` to compile for a multi-device TPU program at all). So when a mesh is active (`jax.set_mesh`, or the
``with mesh:`` of the training loop) and the scan runs a Pallas kernel, `ssd` and `selective_scan` here call
`pallas_kernels.ssd_sharded` / `selective_scan_sharded`, with the batch sharded as the ``activation_batch`` rule says
and the heads (Mamba-2) or channels (Mamba-1) as ``ssm_heads`` / ``ssm_inner`` say: each device scans its own shard,
with no gathers. A mesh axis that does not divide the dimension it would shard is left out (that dimension is then
replicated over it), so small decode batches still run.

Context parallelism: when the ``activation_length`` rule's mesh axes (``context``) have more than one device and
divide the length, both scans run sequence-parallel instead (`ssmjax.context_parallel.context_layout`;
`pallas_kernels.ssd.context_parallel`, `pallas_kernels.selective_scan.context_parallel`), with any implementation.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax._src import mesh as mesh_lib

import pallas_kernels
from pallas_kernels.selective_scan.context_parallel import selective_scan_context_parallel
from pallas_kernels.ssd.context_parallel import ssd_context_parallel
from ssmjax import context_parallel, sharding

__all__ = ["active_mesh", "selective_scan", "ssd", "uses_pallas"]


def active_mesh() -> jax.sharding.Mesh | jax.sharding.AbstractMesh | None:
  """The mesh of the enclosing ``jax.set_mesh`` or ``with mesh:`` block, or None outside one (or for one device)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    mesh = mesh_lib.thread_resources.env.physical_mesh  # the (deprecated) `with mesh:` context, used by flax rules
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return None
  return mesh


def uses_pallas(implementation: str | None) -> bool:
  """Whether a scan `implementation` (None: the backend's default) runs a Pallas kernel."""
  if implementation is None:
    return jax.default_backend() in ("tpu", "gpu")
  return implementation.startswith("pallas")


def _mesh_axes(logical_name: str, size: int, mesh) -> tuple[str, ...]:
  """The mesh axes the logical-axis rules in force give `logical_name`, keeping only those that divide `size`."""
  entry = nn.logical_to_mesh_axes((logical_name,))[0]
  names = () if entry is None else (tuple(entry) if isinstance(entry, (tuple, list)) else (entry,))
  kept, parts = [], 1
  for name in names:
    if size % (parts * mesh.shape[name]) == 0:
      kept.append(name)
      parts *= mesh.shape[name]
  return tuple(kept)


def ssd(x, dt, A, B, C, *, chunk_size: int, implementation: str | None, **kwargs):
  """`pallas_kernels.ssd`, run per shard when a mesh is active and the implementation is a Pallas kernel."""
  layout = context_parallel.context_layout(x.shape[1])
  if layout is not None:
    return ssd_context_parallel(
        x, dt, A, B, C, chunk_size=chunk_size, implementation=implementation, mesh=layout.mesh,
        context_axes=layout.context, batch_axes=layout.axes(sharding.BATCH, x.shape[0]),
        head_axes=layout.axes(sharding.SSM_HEADS, x.shape[2]), **kwargs)
  mesh = active_mesh()
  if mesh is None or not uses_pallas(implementation):
    return pallas_kernels.ssd(x, dt, A, B, C, chunk_size=chunk_size, implementation=implementation, **kwargs)
  return pallas_kernels.ssd_sharded(
      x, dt, A, B, C, chunk_size=chunk_size, implementation=implementation, mesh=mesh,
      batch_axes=_mesh_axes(sharding.BATCH, x.shape[0], mesh),
      head_axes=_mesh_axes(sharding.SSM_HEADS, x.shape[2], mesh), **kwargs)


def selective_scan(u, delta, A, B, C, *, implementation: str | None, **kwargs):
  """`pallas_kernels.selective_scan`, run per shard when a mesh is active and the implementation is a Pallas kernel."""
  layout = context_parallel.context_layout(u.shape[1])
  if layout is not None:
    return selective_scan_context_parallel(
        u, delta, A, B, C, implementation=implementation, mesh=layout.mesh, context_axes=layout.context,
        batch_axes=layout.axes(sharding.BATCH, u.shape[0]),
        channel_axes=layout.axes(sharding.SSM_INNER, u.shape[2]), **kwargs)
  mesh = active_mesh()
  if mesh is None or not uses_pallas(implementation):
    return pallas_kernels.selective_scan(u, delta, A, B, C, implementation=implementation, **kwargs)
  return pallas_kernels.selective_scan_sharded(
      u, delta, A, B, C, implementation=implementation, mesh=mesh,
      batch_axes=_mesh_axes(sharding.BATCH, u.shape[0], mesh),
      channel_axes=_mesh_axes(sharding.SSM_INNER, u.shape[2], mesh), **kwargs)
