"""Sequence-parallel Mamba-2 SSD: the time axis split over a ``context`` mesh axis, one contiguous shard per device.

Notation as `pallas_kernels.ssd.reference` (b batch, t local length, h heads, g groups, r heads per group, p head
dim, n state size). Inside `shard_map`, every device

  1. runs `pallas_kernels.ssd` (any implementation: the jnp chunked scan or a Pallas kernel) on its shard from a zero
     state, giving y_local and its final state S_i [b, h, p, n];
  2. computes its log decay a_t = cumsum of dt * A over the shard (float32) and its total L_i = a_last [b, h];
  3. exchanges (S_i, L_i) with the other shards (`pallas_kernels.context_parallel.incoming_states`: an all-gather and
     an n-step fold) to get H_i, the true state entering the shard;
  4. adds what H_i contributes, the chunked algorithm's inter-chunk term with the shard as the chunk:
        y_t += exp(a_t) C_t · H_i         (head h reads group h // r)
     then applies the z gate; the true final state is exp(L_i) H_i + S_i, taken from the last shard.

The dt processing (bias, softplus, clamp) runs before the scan, so that the decays of step 2 are the scan's.
Gradients flow through the exchange (JAX transposes the all-gather and the fold). Shards need not be chunk
multiples: each local scan pads its own last chunk.

`ssd_context_local` is step 1-4 for code already inside `shard_map`; `ssd_context_parallel` wraps it in `shard_map`
over a mesh, with the batch and heads optionally sharded too (as `pallas_kernels.ssd_sharded`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from pallas_kernels import common
from pallas_kernels.common import axis_names, shard_count, spec_entry
from pallas_kernels.context_parallel import incoming_states, last_shard_value
from pallas_kernels.ssd import reference
from pallas_kernels.ssd.api import _check_dt_limit, _check_shapes, ssd

__all__ = ["ssd_context_local", "ssd_context_parallel"]

_F32 = jnp.float32


def ssd_context_local(x, dt, A, B, C, *, chunk_size, axis_name, D=None, z=None, dt_bias=None, dt_softplus=False,
                      dt_limit=None, initial_state=None, implementation=None, block_sizes=None):
  """The SSD of this device's shard of the sequence, corrected for the shards before it (call inside shard_map).

  Args:
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, implementation, block_sizes: as
      `pallas_kernels.ssd`, with x, dt, B, C, z this device's contiguous shard of the time axis.
    axis_name: the mesh axis (or tuple of axes) the time axis is split over, shards in sequence order.
    initial_state: optional [b, h, p, n], the state before the whole sequence (the same on every context shard).

  Returns:
    (y [b, t, h, p] in x's dtype, final_state [b, h, p, n] float32 after the whole sequence, on every shard).
  """
  batch, length, nheads, headdim = x.shape
  ngroups, dstate = B.shape[2], B.shape[3]
  dt = reference.process_dt(dt, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=_check_dt_limit(dt_limit))
  # An explicit zero state, typed as varying like x: inside shard_map a scan's carry must match its outputs' type.
  _, zero_bhpn = common.vary_alike(x, jnp.zeros((batch, nheads, headdim, dstate), _F32))
  y, local_final_bhpn = ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=zero_bhpn,
                            return_final_state=True, implementation=implementation, block_sizes=block_sizes)
  a_bth = jnp.cumsum(dt.astype(_F32) * A.astype(_F32), axis=1)
  log_decay_bh = a_bth[:, -1]
  entering_bhpn = incoming_states(local_final_bhpn, log_decay_bh[:, :, None, None], axis_name, initial_state)
  r = nheads // ngroups
  entering_bgrpn = entering_bhpn.reshape(batch, ngroups, r, headdim, dstate)
  y_in_btgrp = jnp.einsum("btgn,bgrpn->btgrp", C.astype(_F32), entering_bgrpn, precision=lax.Precision.HIGHEST)
  y_in_bthp = y_in_btgrp.reshape(batch, length, nheads, headdim) * jnp.exp(a_bth)[..., None]
  y = reference.gate((y.astype(_F32) + y_in_bthp).astype(x.dtype), z)
  final_bhpn = jnp.exp(log_decay_bh)[:, :, None, None] * entering_bhpn + local_final_bhpn
  return y, last_shard_value(final_bhpn, axis_name)


def ssd_context_parallel(x, dt, A, B, C, *, chunk_size, mesh, context_axes, batch_axes=None, head_axes=None, D=None,
                         z=None, dt_bias=None, dt_softplus=False, dt_limit=None, initial_state=None,
                         return_final_state=False, implementation=None, block_sizes=None):
  """`pallas_kernels.ssd` with the time axis sharded over ``context_axes`` of ``mesh`` (see the module docstring).

  Args:
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, return_final_state,
      implementation, block_sizes: as `pallas_kernels.ssd` (global arrays).
    mesh: a `jax.sharding.Mesh` (or abstract mesh) with the axes named below.
    context_axes: mesh axis name(s) splitting the time axis, in sequence order.
    batch_axes, head_axes: mesh axis name(s) splitting the batch and the heads (None: not split). B and C are split
      by whole groups when the head shards hold whole groups, else replicated and sliced per shard.

  Raises:
    ValueError: bad shapes (as `pallas_kernels.ssd`), or a length, batch or head count the mesh axes do not divide.
  """
  chunk_size = common.check_positive_int("chunk_size", chunk_size)
  _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_state)
  context, batch_names, heads = axis_names(context_axes), axis_names(batch_axes), axis_names(head_axes)
  if not context:
    raise ValueError("context_axes: give the mesh axis (or axes) that split the time axis")
  nheads, ngroups = x.shape[2], B.shape[2]
  shards = {"x.shape[1] (seqlen)": (x.shape[1], context), "x.shape[0] (batch)": (x.shape[0], batch_names),
            "x.shape[2] (nheads)": (nheads, heads)}
  for what, (size, names) in shards.items():
    if size % shard_count(mesh, names):
      raise ValueError(f"{what} = {size} is not divisible by the {shard_count(mesh, names)} shards of mesh axes "
                       f"{names}")
  head_shards = shard_count(mesh, heads)
  slice_groups = common.slices_groups(nheads, ngroups, head_shards, heads)
  b, t, h = spec_entry(batch_names), spec_entry(context), spec_entry(heads)
  bthp, bth, hh, bhpn = P(b, t, h, None), P(b, t, h), P(h), P(b, h, None, None)
  btgn = P(b, t, None, None) if slice_groups else P(b, t, h, None)

  def local(x, dt, A, B, C, D, z, dt_bias, initial_state):
    if slice_groups:
      B, C = common.local_group(B, C, head_axes=heads, nheads=nheads, ngroups=ngroups, head_shards=head_shards)
    return ssd_context_local(x, dt, A, B, C, chunk_size=chunk_size, axis_name=context, D=D, z=z, dt_bias=dt_bias,
                             dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=initial_state,
                             implementation=implementation, block_sizes=block_sizes)

  optional = lambda a, spec: None if a is None else spec  # noqa: E731
  in_specs = (bthp, bth, hh, btgn, btgn, optional(D, hh), optional(z, bthp), optional(dt_bias, hh),
              optional(initial_state, bhpn))
  y, final_state = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(bthp, bhpn),
                                 check_vma=common.check_vma(implementation))(
      x, dt, A, B, C, D, z, dt_bias, initial_state)
  return (y, final_state) if return_final_state else y
