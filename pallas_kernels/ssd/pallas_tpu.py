"""The SSD forward and backward kernels for TPU (Pallas Mosaic).

Notation as `pallas_kernels.ssd.chunk_math`; b batch, h heads, g groups, c chunks, Q the kernel chunk length
(a multiple of the sublane tile, see `block_sizes.kernel_chunk_length`), T = c * Q.

Design. Grid (b, h / block_heads, c), the chunk axis innermost and sequential ("arbitrary"), the batch and head-block
axes "parallel" so that megacore TPUs split them over both cores. One grid step handles one chunk of `block_heads`
heads that share a B/C group: C·Bᵀ is computed once and reused by each head (a `fori_loop` over the block's heads,
not unrolled, which keeps Mosaic's compile time flat in `block_heads`), and each head's [P, N] float32 state stays
in a VMEM scratch buffer from one chunk to the next, so the inter-chunk recurrence never goes through HBM.
The backward kernel walks the chunks in reverse (its index maps read chunk c - 1 - i at step i) carrying the state
cotangent the same way.

Layout. Mosaic tiles the last two dims of every block by (8, 128) (sublanes, lanes), so the kernels read head-major
arrays: x [b, h, T, P] with [Q, P] blocks, B and C [b, g, T, N] with [Q, N] blocks, and the per-position scalars
(a = cumsum(dt * A) inside each chunk, and dt) as rows [b, h, c, 2, Q] (one [2, Q] block per chunk and head, both
dims full, lane-dense); columns are formed in the kernel by a small transpose. P and N are full dims, so no padding
is needed (P = 64 uses half the lanes of a vreg). The wrappers transpose to and from the model's [b, T, h, P]
layout; XLA fuses those transposes with the neighbouring elementwise work (dt processing, the z gate's backward).
There is no cumsum in the kernels: `jnp.cumsum` does not lower in Mosaic, so `a` is computed by the caller.

The D skip and the z gate (y * silu(z)) are applied in the forward kernel; their backward is elementwise and done
by the caller (`pallas_kernels.ssd.pallas`).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import common
from pallas_kernels.ssd import cost
from pallas_kernels.ssd.block_sizes import SsdTpuBlockSizes
from pallas_kernels.ssd.chunk_math import chunk_backward, chunk_forward, chunk_scores

__all__ = ["backward", "forward"]

_F32 = jnp.float32


def _silu(z):
  return z / (1.0 + jnp.exp(-z))


def _rows_and_cols(rows_ref, j, q):
  """Head j's (a, dt) for this chunk as rows [1, Q], columns [Q, 1] and a_last [1, 1]."""
  rows = rows_ref[j]  # [2, Q]: a, dt
  cols = rows.T
  a_row, dt_row = rows[0:1, :], rows[1:2, :]
  a_col, dt_col = cols[:, 0:1], cols[:, 1:2]
  return dt_col, a_col, dt_row, a_row, a_col[q - 1:q, :]


def _forward_kernel(*refs, block_heads, has_d, has_z, has_init, save_residuals):
  refs = list(refs)
  x_ref, b_ref, c_ref, rows_ref = refs[:4]
  del refs[:4]
  d_ref = refs.pop(0) if has_d else None
  z_ref = refs.pop(0) if has_z else None
  init_ref = refs.pop(0) if has_init else None
  y_ref, final_ref = refs.pop(0), refs.pop(0)
  y_pre_ref = refs.pop(0) if (has_z and save_residuals) else None
  states_ref = refs.pop(0) if save_residuals else None
  (state_ref,) = refs
  head_block, chunk = pl.program_id(1), pl.program_id(2)

  @pl.when(chunk == 0)
  def _load_initial_state():
    state_ref[...] = init_ref[...].astype(_F32) if has_init else jnp.zeros(state_ref.shape, _F32)

  q = x_ref.shape[1]
  causal_ls = lax.broadcasted_iota(jnp.int32, (q, q), 0) >= lax.broadcasted_iota(jnp.int32, (q, q), 1)
  B, C = b_ref[...], c_ref[...]
  scores_ls = chunk_scores(C, B)

  def head(j, carry):
    dt_col, a_col, dt_row, a_row, a_last = _rows_and_cols(rows_ref, j, q)
    state = state_ref[j]
    if save_residuals:
      states_ref[j] = state  # the state entering this chunk, for the backward pass
    x = x_ref[j]
    y, state_ref[j] = chunk_forward(x, B, C, dt_col, a_col, dt_row, a_row, a_last, state, scores_ls, causal_ls)
    if has_d:
      y = y + d_ref[head_block * block_heads + j] * x.astype(_F32)
    if has_z:
      if save_residuals:
        y_pre_ref[j] = y.astype(y_pre_ref.dtype)
      y = y * _silu(z_ref[j].astype(_F32))
    y_ref[j] = y.astype(y_ref.dtype)
    return carry

  lax.fori_loop(0, block_heads, head, 0)

  @pl.when(chunk == pl.num_programs(2) - 1)
  def _store_final_state():
    final_ref[...] = state_ref[...]


def _backward_kernel(x_ref, b_ref, c_ref, rows_ref, states_ref, dy_ref, dfinal_ref,
                     dx_ref, drows_ref, db_ref, dc_ref, dinit_ref, dstate_ref, *, block_heads):
  step = pl.program_id(2)  # this step handles chunk c - 1 - step

  @pl.when(step == 0)
  def _load_final_state_cotangent():
    dstate_ref[...] = dfinal_ref[...]

  q = x_ref.shape[1]
  causal_sl = lax.broadcasted_iota(jnp.int32, (q, q), 0) <= lax.broadcasted_iota(jnp.int32, (q, q), 1)
  last_col = lax.broadcasted_iota(jnp.int32, (q, 1), 0) == q - 1
  B, C = b_ref[...], c_ref[...]
  scores_sl = chunk_scores(B, C)

  def head(j, sums):
    dt_col, a_col, dt_row, a_row, a_last = _rows_and_cols(rows_ref, j, q)
    dx, ddt, da, dB, dC, dstate_ref[j] = chunk_backward(
        x_ref[j], B, C, dt_col, a_col, dt_row, a_row, a_last, states_ref[j], dy_ref[j], dstate_ref[j],
        scores_sl, causal_sl, last_col,
    )
    dx_ref[j] = dx.astype(dx_ref.dtype)
    drows_ref[j, 0:1, :] = ddt.T
    drows_ref[j, 1:2, :] = da.T
    return sums[0] + dB, sums[1] + dC

  db_ref[...], dc_ref[...] = lax.fori_loop(
      0, block_heads, head, (jnp.zeros(db_ref.shape, _F32), jnp.zeros(dc_ref.shape, _F32))
  )

  @pl.when(step == pl.num_programs(2) - 1)
  def _store_initial_state_cotangent():
    dinit_ref[...] = dstate_ref[...]


def _head_major(x):  # [b, T, h, ...] -> [b, h, T, ...]
  return jnp.swapaxes(x, 1, 2)


def _rows(dt, a, q):
  """[b, T, h] dt and a -> [b, h, c, 2, Q] rows (a first)."""
  batch, seqlen, nheads = dt.shape
  stacked = jnp.stack([a, dt], axis=-1).reshape(batch, seqlen // q, q, nheads, 2)
  return jnp.transpose(stacked, (0, 3, 1, 4, 2))


def _compiler_params(block_sizes: SsdTpuBlockSizes):
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=block_sizes.vmem_limit_bytes
  )


def forward(x, B, C, dt, a, D, z, initial_state, *, chunk, block_sizes: SsdTpuBlockSizes, interpret,
            save_residuals):
  """The forward kernel on chunk-padded inputs in the model layout.

  Args:
    x: [b, T, h, P] with T a multiple of `chunk`. B, C: [b, T, g, N]. dt, a: [b, T, h] float32 (a: the cumsum of
      dt * A inside each chunk). D: [h] float32 or None. z: [b, T, h, P] or None. initial_state: [b, h, P, N] or None.
    chunk: the kernel chunk length Q. block_sizes: resolved `SsdTpuBlockSizes`. interpret: `pallas_call`'s.
    save_residuals: also return what `backward` needs.

  Returns:
    (y [b, T, h, P] in x.dtype, final_state [b, h, P, N] f32, y_pre (y before the z gate, [b, T, h, P]; None
    unless z is given and save_residuals), chunk_states ([b, h, c, P, N] f32, the state entering each chunk; None
    unless save_residuals)).
  """
  batch, seqlen, nheads, headdim = x.shape
  ngroups, dstate = B.shape[2], B.shape[3]
  nchunks = seqlen // chunk
  hb = block_sizes.block_heads
  heads_per_group = nheads // ngroups
  has_d, has_z, has_init = D is not None, z is not None, initial_state is not None

  head_block_spec = pl.BlockSpec((None, hb, chunk, headdim), lambda bi, hi, ci: (bi, hi, ci, 0))
  group_spec = pl.BlockSpec((None, None, chunk, dstate), lambda bi, hi, ci: (bi, hi * hb // heads_per_group, ci, 0))
  rows_spec = pl.BlockSpec((None, hb, None, 2, chunk), lambda bi, hi, ci: (bi, hi, ci, 0, 0))
  state_spec = pl.BlockSpec((None, hb, headdim, dstate), lambda bi, hi, ci: (bi, hi, 0, 0))
  inputs = [_head_major(x), _head_major(B), _head_major(C), _rows(dt, a, chunk)]
  in_specs = [head_block_spec, group_spec, group_spec, rows_spec]
  if has_d:
    inputs.append(D.astype(_F32))
    in_specs.append(pl.BlockSpec(memory_space=pltpu.SMEM))
  if has_z:
    inputs.append(_head_major(z))
    in_specs.append(head_block_spec)
  if has_init:
    inputs.append(initial_state)
    in_specs.append(state_spec)

  out_shape = [common.out_struct((batch, nheads, seqlen, headdim), x.dtype, *inputs),
               common.out_struct((batch, nheads, headdim, dstate), _F32, *inputs)]
  out_specs = [head_block_spec, state_spec]
  if has_z and save_residuals:
    out_shape.append(common.out_struct((batch, nheads, seqlen, headdim), x.dtype, *inputs))
    out_specs.append(head_block_spec)
  if save_residuals:
    out_shape.append(common.out_struct((batch, nheads, nchunks, headdim, dstate), _F32, *inputs))
    out_specs.append(pl.BlockSpec((None, hb, None, headdim, dstate), lambda bi, hi, ci: (bi, hi, ci, 0, 0)))

  kernel = functools.partial(_forward_kernel, block_heads=hb, has_d=has_d, has_z=has_z, has_init=has_init,
                             save_residuals=save_residuals)
  outputs = pl.pallas_call(
      kernel,
      grid=(batch, nheads // hb, nchunks),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((hb, headdim, dstate), _F32)],
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=cost.ssd_flops(batch, seqlen, nheads, headdim, nheads // hb, dstate, chunk),
          transcendentals=cost.ssd_transcendentals(batch, seqlen, nheads, chunk),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + x.size * x.dtype.itemsize,
      ),
      interpret=interpret,
      name="ssd_forward_tpu",
  )(*inputs)
  y, final_state = _head_major(outputs[0]), outputs[1]
  y_pre = _head_major(outputs[2]) if (has_z and save_residuals) else None
  chunk_states = outputs[-1] if save_residuals else None
  return y, final_state, y_pre, chunk_states


def backward(x, B, C, dt, a, chunk_states, dy, dfinal_state, *, chunk, block_sizes: SsdTpuBlockSizes, interpret):
  """The backward kernel: cotangents of the SSD core (no D skip, no z gate) on chunk-padded inputs.

  Args:
    x, B, C, dt, a: as `forward`. chunk_states: `forward`'s residual. dy: [b, T, h, P], the cotangent of y before
      the D skip and the z gate. dfinal_state: [b, h, P, N] f32.

  Returns:
    (dx [b, T, h, P] in x.dtype, ddt [b, T, h] f32 (through dt * x only), da [b, T, h] f32 (cotangent of a),
    dB [b, T, g, N] f32, dC [b, T, g, N] f32, dinitial_state [b, h, P, N] f32).
  """
  batch, seqlen, nheads, headdim = x.shape
  ngroups, dstate = B.shape[2], B.shape[3]
  nchunks = seqlen // chunk
  hb = block_sizes.block_heads
  heads_per_group = nheads // ngroups
  nblocks = nheads // hb
  rev = lambda ci: nchunks - 1 - ci  # noqa: E731

  head_block_spec = pl.BlockSpec((None, hb, chunk, headdim), lambda bi, hi, ci: (bi, hi, rev(ci), 0))
  group_spec = pl.BlockSpec(
      (None, None, chunk, dstate), lambda bi, hi, ci: (bi, hi * hb // heads_per_group, rev(ci), 0)
  )
  rows_spec = pl.BlockSpec((None, hb, None, 2, chunk), lambda bi, hi, ci: (bi, hi, rev(ci), 0, 0))
  chunk_state_spec = pl.BlockSpec((None, hb, None, headdim, dstate), lambda bi, hi, ci: (bi, hi, rev(ci), 0, 0))
  state_spec = pl.BlockSpec((None, hb, headdim, dstate), lambda bi, hi, ci: (bi, hi, 0, 0))
  block_group_spec = pl.BlockSpec((None, None, chunk, dstate), lambda bi, hi, ci: (bi, hi, rev(ci), 0))
  inputs = [_head_major(x), _head_major(B), _head_major(C), _rows(dt, a, chunk), chunk_states, _head_major(dy),
            dfinal_state.astype(_F32)]
  in_specs = [head_block_spec, group_spec, group_spec, rows_spec, chunk_state_spec, head_block_spec, state_spec]
  out_shape = [
      common.out_struct((batch, nheads, seqlen, headdim), x.dtype, *inputs),
      common.out_struct((batch, nheads, nchunks, 2, chunk), _F32, *inputs),
      common.out_struct((batch, nblocks, seqlen, dstate), _F32, *inputs),
      common.out_struct((batch, nblocks, seqlen, dstate), _F32, *inputs),
      common.out_struct((batch, nheads, headdim, dstate), _F32, *inputs),
  ]
  out_specs = [head_block_spec, rows_spec, block_group_spec, block_group_spec, state_spec]
  dx, drows, dB, dC, dinit = pl.pallas_call(
      functools.partial(_backward_kernel, block_heads=hb),
      grid=(batch, nblocks, nchunks),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((hb, headdim, dstate), _F32)],
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=2 * cost.ssd_flops(batch, seqlen, nheads, headdim, nblocks, dstate, chunk),
          transcendentals=cost.ssd_transcendentals(batch, seqlen, nheads, chunk),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + 2 * x.size * x.dtype.itemsize,
      ),
      interpret=interpret,
      name="ssd_backward_tpu",
  )(*inputs)
  # [b, h, c, 2, Q] -> [b, T, h] each; head blocks -> groups (the heads of a group are contiguous).
  drows = jnp.transpose(drows, (0, 2, 4, 1, 3)).reshape(batch, seqlen, nheads, 2)
  dB = dB.reshape(batch, ngroups, nblocks // ngroups, seqlen, dstate).sum(axis=2)
  dC = dC.reshape(batch, ngroups, nblocks // ngroups, seqlen, dstate).sum(axis=2)
  return _head_major(dx), drows[..., 0], drows[..., 1], _head_major(dB), _head_major(dC), dinit
