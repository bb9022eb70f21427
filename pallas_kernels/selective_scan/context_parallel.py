"""Sequence-parallel Mamba-1 selective scan: the time axis split over a ``context`` mesh axis.

Notation as `pallas_kernels.selective_scan.reference` (b batch, t local length, e channels, n state size). Inside
`shard_map`, every device

  1. applies delta_bias and softplus, then runs `pallas_kernels.selective_scan` (any implementation) on its shard from
     a zero state without the z gate, giving y_local and its final state S_i [b, e, n];
  2. computes c_t = cumsum of delta over the shard [b, t, e]; the decay from the shard start to t is exp(c_t * A)
     and the shard's total log decay is L_i = c_last * A [b, e, n];
  3. exchanges (S_i, L_i) with the other shards (`pallas_kernels.context_parallel.incoming_states`) to get H_i, the
     true state entering the shard;
  4. adds what H_i contributes, ``y_t += sum_n C_t[n] exp(c_t A)[e, n] H_i[e, n]``, then applies the z gate; the true
     final state is exp(L_i) H_i + S_i, taken from the last shard.

Step 4 is written as an elementwise product reduced over n, which XLA fuses into one reduction (no [b, t, e, n]
temporary on TPU / GPU). `selective_scan_context_local` is steps 1-4 inside `shard_map`;
`selective_scan_context_parallel` wraps it in `shard_map` over a mesh, with the batch and channels optionally sharded
too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pallas_kernels import common
from pallas_kernels.common import axis_names, shard_count, spec_entry
from pallas_kernels.context_parallel import incoming_states, last_shard_value
from pallas_kernels.selective_scan.api import _check_shapes, selective_scan

__all__ = ["selective_scan_context_local", "selective_scan_context_parallel"]

_F32 = jnp.float32


def selective_scan_context_local(u, delta, A, B, C, *, axis_name, D=None, z=None, delta_bias=None,
                                 delta_softplus=False, initial_state=None, implementation=None, block_sizes=None):
  """The selective scan of this device's shard of the sequence, corrected for the shards before it (in shard_map).

  Args:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, implementation, block_sizes: as
      `pallas_kernels.selective_scan`, with u, delta, B, C, z this device's contiguous shard of the time axis.
    axis_name: the mesh axis (or tuple of axes) the time axis is split over, shards in sequence order.
    initial_state: optional [b, e, n], the state before the whole sequence (the same on every context shard).

  Returns:
    (y [b, t, e] in u's dtype, final_state [b, e, n] float32 after the whole sequence, on every shard).
  """
  batch, _, d_inner = u.shape
  dstate = A.shape[1]
  delta = delta.astype(_F32)
  if delta_bias is not None:
    delta = delta + delta_bias.astype(_F32)
  if delta_softplus:
    delta = jax.nn.softplus(delta)
  # An explicit zero state, typed as varying like u: inside shard_map a scan's carry must match its outputs' type.
  _, zero_ben = common.vary_alike(u, jnp.zeros((batch, d_inner, dstate), _F32))
  y, local_final_ben = selective_scan(u, delta, A, B, C, D=D, initial_state=zero_ben, return_final_state=True,
                                      implementation=implementation, block_sizes=block_sizes)
  A_en = A.astype(_F32)
  c_bte = jnp.cumsum(delta, axis=1)
  log_decay_ben = c_bte[:, -1, :, None] * A_en
  entering_ben = incoming_states(local_final_ben, log_decay_ben, axis_name, initial_state)
  decay_bten = jnp.exp(c_bte[..., None] * A_en)
  y_in_bte = jnp.sum(C.astype(_F32)[:, :, None, :] * decay_bten * entering_ben[:, None], axis=-1)
  y = y.astype(_F32) + y_in_bte
  if z is not None:
    y = y * jax.nn.silu(z.astype(_F32))
  final_ben = jnp.exp(log_decay_ben) * entering_ben + local_final_ben
  return y.astype(u.dtype), last_shard_value(final_ben, axis_name)


def selective_scan_context_parallel(u, delta, A, B, C, *, mesh, context_axes, batch_axes=None, channel_axes=None,
                                    D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                                    return_final_state=False, implementation=None, block_sizes=None):
  """`pallas_kernels.selective_scan` with the time axis sharded over ``context_axes`` of ``mesh``.

  Args:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state, implementation,
      block_sizes: as `pallas_kernels.selective_scan` (global arrays).
    mesh: a `jax.sharding.Mesh` (or abstract mesh). context_axes: mesh axis name(s) splitting the time axis.
    batch_axes, channel_axes: mesh axis name(s) splitting the batch and d_inner (None: not split); B and C are
      replicated over the channel axes.

  Raises:
    ValueError: bad shapes (as `pallas_kernels.selective_scan`), or a length, batch or d_inner the mesh axes do not
      divide.
  """
  _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
  context, batch_names, channels = axis_names(context_axes), axis_names(batch_axes), axis_names(channel_axes)
  if not context:
    raise ValueError("context_axes: give the mesh axis (or axes) that split the time axis")
  shards = {"u.shape[1] (seqlen)": (u.shape[1], context), "u.shape[0] (batch)": (u.shape[0], batch_names),
            "u.shape[2] (d_inner)": (u.shape[2], channels)}
  for what, (size, names) in shards.items():
    if size % shard_count(mesh, names):
      raise ValueError(f"{what} = {size} is not divisible by the {shard_count(mesh, names)} shards of mesh axes "
                       f"{names}")
  b, t, e = spec_entry(batch_names), spec_entry(context), spec_entry(channels)
  bte, en, btn, ee, ben = P(b, t, e), P(e, None), P(b, t, None), P(e), P(b, e, None)

  def local(u, delta, A, B, C, D, z, delta_bias, initial_state):
    return selective_scan_context_local(u, delta, A, B, C, axis_name=context, D=D, z=z, delta_bias=delta_bias,
                                        delta_softplus=delta_softplus, initial_state=initial_state,
                                        implementation=implementation, block_sizes=block_sizes)

  optional = lambda a, spec: None if a is None else spec  # noqa: E731
  in_specs = (bte, bte, en, btn, btn, optional(D, ee), optional(z, bte), optional(delta_bias, ee),
              optional(initial_state, ben))
  y, final_state = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(bte, ben),
                                 check_vma=common.check_vma(implementation))(
      u, delta, A, B, C, D, z, delta_bias, initial_state)
  return (y, final_state) if return_final_state else y
