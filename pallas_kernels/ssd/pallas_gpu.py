"""The SSD forward and backward kernels for GPU (Pallas Triton).

Notation as `pallas_kernels.ssd.chunk_math`; b batch, h heads, g groups, c chunks, Q the kernel chunk length (a
power of two >= 16, see `block_sizes.kernel_chunk_length`), T = c * Q.

Design. Grid (b, h): one program per sequence and head loops over the c chunks (`lax.fori_loop`), carrying the head's
[P, N] float32 state in registers, so the inter-chunk recurrence never goes through global memory; Triton pipelines
the next chunk's loads (`num_stages`). The backward program loops over the chunks in reverse, carrying the state
cotangent. Each program reads its head's slices of the model layout directly ([b, T, h, P] x, [b, T, g, N] B and
C, [b, T, h] dt and a): Triton has no tile constraint on strides, so no transposes are needed. Triton does need
power-of-two sizes (>= 16 for `tl.dot`) for every loaded tile, so P and N are zero-padded up to one here (a no-op
for the usual P = 64, N = 128) and the chunk length by the caller.

Parallelism is b * h programs. That fills an H100/H200 for the large models (the 8B hybrid has h = 128), but not
for b * h below the number of SMs (mamba2-130m at batch 1 has 24 heads): mamba_ssm's kernels also parallelise
over chunks there, at the price of writing every chunk's state to global memory.

The D skip and the z gate (y * silu(z)) are applied in the forward kernel; their backward is elementwise and done
by the caller (`pallas_kernels.ssd.pallas`). Per-head dB and dC are summed over each group's heads by the caller.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import common
from pallas_kernels.ssd import cost
from pallas_kernels.ssd.block_sizes import SsdGpuBlockSizes
from pallas_kernels.ssd.chunk_math import chunk_backward, chunk_forward, chunk_scores

__all__ = ["backward", "forward"]

_F32 = jnp.float32


def _silu(z):
  return z / (1.0 + jnp.exp(-z))


def _chunk_scalars(dt_ref, a_ref, chunk_index, q):
  """This chunk's (a, dt) as columns [Q, 1] and rows [1, Q], and a at its last position (a scalar)."""
  window = pl.ds(pl.multiple_of(chunk_index * q, q), q)
  dt, a = dt_ref[window], a_ref[window]
  a_last = a_ref[chunk_index * q + q - 1]
  return window, dt[:, None], a[:, None], dt[None, :], a[None, :], a_last


def _forward_kernel(*refs, nchunks, has_d, has_z, has_init, save_residuals):
  refs = list(refs)
  x_ref, b_ref, c_ref, dt_ref, a_ref = refs[:5]
  del refs[:5]
  d_ref = refs.pop(0) if has_d else None
  z_ref = refs.pop(0) if has_z else None
  init_ref = refs.pop(0) if has_init else None
  y_ref, final_ref = refs.pop(0), refs.pop(0)
  y_pre_ref = refs.pop(0) if (has_z and save_residuals) else None
  states_ref = refs.pop(0) if save_residuals else None
  assert not refs
  q = dt_ref.shape[0] // nchunks
  causal_ls = jnp.arange(q)[:, None] >= jnp.arange(q)[None, :]
  d = d_ref[...] if has_d else None

  def body(chunk_index, state):
    window, dt_col, a_col, dt_row, a_row, a_last = _chunk_scalars(dt_ref, a_ref, chunk_index, q)
    x, B, C = x_ref[window, :], b_ref[window, :], c_ref[window, :]
    if save_residuals:
      states_ref[chunk_index] = state  # the state entering this chunk, for the backward pass
    y, state = chunk_forward(x, B, C, dt_col, a_col, dt_row, a_row, a_last, state, chunk_scores(C, B), causal_ls)
    if has_d:
      y = y + d * x.astype(_F32)
    if has_z:
      if save_residuals:
        y_pre_ref[window, :] = y.astype(y_pre_ref.dtype)
      y = y * _silu(z_ref[window, :].astype(_F32))
    y_ref[window, :] = y.astype(y_ref.dtype)
    return state

  initial = init_ref[...].astype(_F32) if has_init else jnp.zeros(final_ref.shape, _F32)
  final_ref[...] = lax.fori_loop(0, nchunks, body, initial)


def _backward_kernel(x_ref, b_ref, c_ref, dt_ref, a_ref, states_ref, dy_ref, dfinal_ref,
                     dx_ref, ddt_ref, da_ref, db_ref, dc_ref, dinit_ref, *, nchunks):
  q = dt_ref.shape[0] // nchunks
  causal_sl = jnp.arange(q)[:, None] <= jnp.arange(q)[None, :]
  last_col = (jnp.arange(q) == q - 1)[:, None]

  def body(step, dstate):
    chunk_index = nchunks - 1 - step
    window, dt_col, a_col, dt_row, a_row, a_last = _chunk_scalars(dt_ref, a_ref, chunk_index, q)
    x, B, C = x_ref[window, :], b_ref[window, :], c_ref[window, :]
    dx, ddt, da, dB, dC, dstate = chunk_backward(
        x, B, C, dt_col, a_col, dt_row, a_row, a_last, states_ref[chunk_index], dy_ref[window, :], dstate,
        chunk_scores(B, C), causal_sl, last_col,
    )
    dx_ref[window, :] = dx.astype(dx_ref.dtype)
    ddt_ref[window] = ddt.reshape(q)
    da_ref[window] = da.reshape(q)
    db_ref[window, :] = dB
    dc_ref[window, :] = dC
    return dstate

  dinit_ref[...] = lax.fori_loop(0, nchunks, body, dfinal_ref[...].astype(_F32))


def _padded_sizes(headdim, dstate):
  return max(16, common.next_power_of_2(headdim)), max(16, common.next_power_of_2(dstate))


def _compiler_params(block_sizes: SsdGpuBlockSizes):
  return plgpu.CompilerParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)


def forward(x, B, C, dt, a, D, z, initial_state, *, chunk, block_sizes: SsdGpuBlockSizes, interpret,
            save_residuals):
  """The forward kernel on chunk-padded inputs; arguments and results as `pallas_tpu.forward`."""
  batch, seqlen, nheads, headdim = x.shape
  ngroups, dstate = B.shape[2], B.shape[3]
  nchunks = seqlen // chunk
  heads_per_group = nheads // ngroups
  p, n = _padded_sizes(headdim, dstate)
  has_d, has_z, has_init = D is not None, z is not None, initial_state is not None

  head_spec = pl.BlockSpec((None, seqlen, None, p), lambda bi, hi: (bi, 0, hi, 0))
  group_spec = pl.BlockSpec((None, seqlen, None, n), lambda bi, hi: (bi, 0, hi // heads_per_group, 0))
  scalar_spec = pl.BlockSpec((None, seqlen, None), lambda bi, hi: (bi, 0, hi))
  state_spec = pl.BlockSpec((None, None, p, n), lambda bi, hi: (bi, hi, 0, 0))
  inputs = [common.pad_axis_to(x, p, 3), common.pad_axis_to(B, n, 3), common.pad_axis_to(C, n, 3), dt, a]
  in_specs = [head_spec, group_spec, group_spec, scalar_spec, scalar_spec]
  if has_d:
    inputs.append(D)
    in_specs.append(pl.BlockSpec((None,), lambda bi, hi: (hi,)))
  if has_z:
    inputs.append(common.pad_axis_to(z, p, 3))
    in_specs.append(head_spec)
  if has_init:
    inputs.append(common.pad_axis_to(common.pad_axis_to(initial_state, p, 2), n, 3))
    in_specs.append(state_spec)

  out_shape = [common.out_struct((batch, seqlen, nheads, p), x.dtype, *inputs),
               common.out_struct((batch, nheads, p, n), _F32, *inputs)]
  out_specs = [head_spec, state_spec]
  if has_z and save_residuals:
    out_shape.append(common.out_struct((batch, seqlen, nheads, p), x.dtype, *inputs))
    out_specs.append(head_spec)
  if save_residuals:
    out_shape.append(common.out_struct((batch, nheads, nchunks, p, n), _F32, *inputs))
    out_specs.append(pl.BlockSpec((None, None, nchunks, p, n), lambda bi, hi: (bi, hi, 0, 0, 0)))

  kernel = functools.partial(_forward_kernel, nchunks=nchunks, has_d=has_d, has_z=has_z, has_init=has_init,
                             save_residuals=save_residuals)
  outputs = pl.pallas_call(
      kernel,
      grid=(batch, nheads),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=cost.ssd_flops(batch, seqlen, nheads, headdim, nheads, dstate, chunk),
          transcendentals=cost.ssd_transcendentals(batch, seqlen, nheads, chunk),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + x.size * x.dtype.itemsize,
      ),
      interpret=interpret,
      name="ssd_forward_gpu",
  )(*inputs)
  y, final_state = outputs[0][..., :headdim], outputs[1][:, :, :headdim, :dstate]
  y_pre = outputs[2][..., :headdim] if (has_z and save_residuals) else None
  chunk_states = outputs[-1] if save_residuals else None  # kept padded: only `backward` reads it
  return y, final_state, y_pre, chunk_states


def backward(x, B, C, dt, a, chunk_states, dy, dfinal_state, *, chunk, block_sizes: SsdGpuBlockSizes, interpret):
  """The backward kernel; arguments and results as `pallas_tpu.backward`."""
  batch, seqlen, nheads, headdim = x.shape
  ngroups, dstate = B.shape[2], B.shape[3]
  nchunks = seqlen // chunk
  heads_per_group = nheads // ngroups
  p, n = _padded_sizes(headdim, dstate)

  head_spec = pl.BlockSpec((None, seqlen, None, p), lambda bi, hi: (bi, 0, hi, 0))
  group_spec = pl.BlockSpec((None, seqlen, None, n), lambda bi, hi: (bi, 0, hi // heads_per_group, 0))
  per_head_state_spec = pl.BlockSpec((None, seqlen, None, n), lambda bi, hi: (bi, 0, hi, 0))
  scalar_spec = pl.BlockSpec((None, seqlen, None), lambda bi, hi: (bi, 0, hi))
  state_spec = pl.BlockSpec((None, None, p, n), lambda bi, hi: (bi, hi, 0, 0))
  chunk_states_spec = pl.BlockSpec((None, None, nchunks, p, n), lambda bi, hi: (bi, hi, 0, 0, 0))
  dfinal = common.pad_axis_to(common.pad_axis_to(dfinal_state.astype(_F32), p, 2), n, 3)
  inputs = [common.pad_axis_to(x, p, 3), common.pad_axis_to(B, n, 3), common.pad_axis_to(C, n, 3), dt, a,
            chunk_states, common.pad_axis_to(dy, p, 3), dfinal]
  in_specs = [head_spec, group_spec, group_spec, scalar_spec, scalar_spec, chunk_states_spec, head_spec, state_spec]
  out_shape = [
      common.out_struct((batch, seqlen, nheads, p), x.dtype, *inputs),
      common.out_struct((batch, seqlen, nheads), _F32, *inputs),
      common.out_struct((batch, seqlen, nheads), _F32, *inputs),
      common.out_struct((batch, seqlen, nheads, n), _F32, *inputs),
      common.out_struct((batch, seqlen, nheads, n), _F32, *inputs),
      common.out_struct((batch, nheads, p, n), _F32, *inputs),
  ]
  out_specs = [head_spec, scalar_spec, scalar_spec, per_head_state_spec, per_head_state_spec, state_spec]
  dx, ddt, da, dB, dC, dinit = pl.pallas_call(
      functools.partial(_backward_kernel, nchunks=nchunks),
      grid=(batch, nheads),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=2 * cost.ssd_flops(batch, seqlen, nheads, headdim, nheads, dstate, chunk),
          transcendentals=cost.ssd_transcendentals(batch, seqlen, nheads, chunk),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + 2 * x.size * x.dtype.itemsize,
      ),
      interpret=interpret,
      name="ssd_backward_gpu",
  )(*inputs)
  # Per-head dB, dC -> per group (the heads of a group are contiguous).
  dB = dB[..., :dstate].reshape(batch, seqlen, ngroups, heads_per_group, dstate).sum(axis=3)
  dC = dC[..., :dstate].reshape(batch, seqlen, ngroups, heads_per_group, dstate).sum(axis=3)
  return dx[..., :headdim], ddt, da, dB, dC, dinit[:, :, :headdim, :dstate]
