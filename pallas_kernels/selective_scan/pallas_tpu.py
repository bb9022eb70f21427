"""The Mamba-1 selective-scan forward and backward kernels for TPU (Pallas Mosaic).

Notation as `pallas_kernels.selective_scan.scan_math`: b batch, T (padded) length, E (padded) channels, N state
size; L = `block_time`, Eb = `block_channels`.

Design. Grid (b, E / Eb, T / L), time innermost and sequential ("arbitrary"), batch and channel blocks "parallel"
(megacore TPUs split them over both cores). Each grid step scans L time steps of Eb channels with the [N, Eb]
float32 state in a VMEM scratch buffer that carries over to the next time block, so the state never goes through
HBM. The time loop runs over groups of 8 steps (one sublane tile): each group loads [8, Eb] rows of u, delta, z and
[8, N] rows of B and C at a tile-aligned offset, transposes B and C once to [N, 8] columns, and unrolls its 8 steps
with static slices. The forward saves the state entering each time block (a [b, T / L, N, E] residual).

The backward walks the time blocks in reverse. For each block it first recomputes the block's states from the
saved entry state into a [L, N, Eb] VMEM buffer, then walks the steps in reverse carrying the state cotangent (in
a VMEM scratch buffer across blocks). dA, dD and d(delta_bias) accumulate over the time blocks in output blocks
that stay resident per (batch, channel block); dB and dC are per channel block and summed by the caller.

Layout. u, delta, z and y keep the model layout [b, T, E] ([L, Eb] blocks), B and C [b, T, N] ([L, N] blocks, N a
full dim); A and the states are transposed to [N, E] (state index on sublanes, channels on lanes). D and
delta_bias are [1, E] rows. delta_bias + softplus, the D skip and the z gate are fused in both kernels.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import common
from pallas_kernels.selective_scan.block_sizes import ScanTpuBlockSizes
from pallas_kernels.selective_scan.scan_math import gate_backward, process_delta, silu, step_backward, step_forward

__all__ = ["backward", "forward"]

_F32 = jnp.float32
_GROUP = 8  # time steps per unrolled group: one sublane tile of float32 rows


class _Refs:
  """Named access to a kernel's refs, in the order the wrapper passes them (optional ones only when present)."""

  def __init__(self, refs, names):
    refs = list(refs)
    for name in names:
      if name is not None:
        setattr(self, name, refs.pop(0))
    assert not refs, f"{len(refs)} refs left over"


def _group_inputs(r, t0, time_block, block_time, seqlen, softplus, bias):
  """Rows [8, Eb] of u, raw delta, delta and d delta / d raw; columns [N, 8] of B and C, for steps t0 .. t0 + 7."""
  rows = pl.ds(t0, _GROUP)
  step_ids = lax.broadcasted_iota(jnp.int32, (_GROUP, 1), 0)
  valid = time_block * block_time + t0 + step_ids < seqlen
  u = r.u[rows, :].astype(_F32)
  delta, slope = process_delta(r.delta[rows, :].astype(_F32), bias, softplus, valid)
  B_cols = r.B[rows, :].astype(_F32).T
  C_cols = r.C[rows, :].astype(_F32).T
  return rows, step_ids, u, delta, slope, B_cols, C_cols


def _names(has_d, has_z, has_bias, has_init, outputs):
  inputs = ["u", "delta", "A", "B", "C", "D" if has_d else None, "z" if has_z else None,
            "bias" if has_bias else None, "init" if has_init else None]
  return inputs + outputs


def _forward_kernel(*refs, seqlen, softplus, has_d, has_z, has_bias, has_init, save_residuals):
  r = _Refs(refs, _names(has_d, has_z, has_bias, has_init,
                         ["y", "final", "entry" if save_residuals else None, "state"]))
  time_block = pl.program_id(2)

  @pl.when(time_block == 0)
  def _load_initial_state():
    r.state[...] = r.init[...] if has_init else jnp.zeros(r.state.shape, _F32)

  if save_residuals:
    r.entry[...] = r.state[...]
  A = r.A[...]
  bias = r.bias[...] if has_bias else None
  block_time = r.u.shape[0]

  def group(k, h):
    t0 = pl.multiple_of(k * _GROUP, _GROUP)
    rows, step_ids, u, delta, _, B_cols, C_cols = _group_inputs(r, t0, time_block, block_time, seqlen, softplus,
                                                                 bias)
    y = jnp.zeros(u.shape, _F32)
    for j in range(_GROUP):
      h, y_j = step_forward(h, u[j:j + 1], delta[j:j + 1], A, B_cols[:, j:j + 1], C_cols[:, j:j + 1])
      y = jnp.where(step_ids == j, y_j, y)
    if has_d:
      y = y + r.D[...] * u
    if has_z:
      y = y * silu(r.z[rows, :].astype(_F32))
    r.y[rows, :] = y.astype(r.y.dtype)
    return h

  r.state[...] = lax.fori_loop(0, block_time // _GROUP, group, r.state[...])

  @pl.when(time_block == pl.num_programs(2) - 1)
  def _store_final_state():
    r.final[...] = r.state[...]


def _backward_kernel(*refs, seqlen, softplus, has_d, has_z, has_bias):
  r = _Refs(refs, _names(has_d, has_z, has_bias, False, [
      "entry", "dy", "dfinal",
      "du", "ddelta", "dz" if has_z else None, "dB", "dC", "dA", "dD" if has_d else None,
      "dbias" if has_bias else None, "dinit", "dstate", "states"]))
  step = pl.program_id(2)
  time_block = pl.num_programs(2) - 1 - step
  block_time = r.u.shape[0]
  ngroups = block_time // _GROUP

  @pl.when(step == 0)
  def _start():
    r.dstate[...] = r.dfinal[...]
    r.dA[...] = jnp.zeros(r.dA.shape, _F32)
    if has_d:
      r.dD[...] = jnp.zeros(r.dD.shape, _F32)
    if has_bias:
      r.dbias[...] = jnp.zeros(r.dbias.shape, _F32)

  A = r.A[...]
  bias = r.bias[...] if has_bias else None
  D = r.D[...] if has_d else None
  entry = r.entry[...]

  def recompute_group(k, h):  # the states of this time block, into r.states
    t0 = pl.multiple_of(k * _GROUP, _GROUP)
    _, _, u, delta, _, B_cols, C_cols = _group_inputs(r, t0, time_block, block_time, seqlen, softplus, bias)
    for j in range(_GROUP):
      h, _ = step_forward(h, u[j:j + 1], delta[j:j + 1], A, B_cols[:, j:j + 1], C_cols[:, j:j + 1])
      r.states[t0 + j] = h
    return h

  lax.fori_loop(0, ngroups, recompute_group, entry)

  def reverse_group(k, carry):
    dh, dA, dD, dbias = carry
    t0 = pl.multiple_of((ngroups - 1 - k) * _GROUP, _GROUP)
    rows, step_ids, u, delta, slope, B_cols, C_cols = _group_inputs(r, t0, time_block, block_time, seqlen,
                                                                    softplus, bias)
    dy = r.dy[rows, :].astype(_F32)
    z = r.z[rows, :].astype(_F32) if has_z else None
    du, ddelta, dz = (jnp.zeros(u.shape, _F32) for _ in range(3))
    dB = jnp.zeros((_GROUP, B_cols.shape[0]), _F32)
    dC = jnp.zeros((_GROUP, B_cols.shape[0]), _F32)
    for j in reversed(range(_GROUP)):
      t = t0 + j
      h = r.states[t]
      h_prev = jnp.where(t == 0, entry, r.states[jnp.maximum(t - 1, 0)])
      u_j, B_j, C_j, dy_j = u[j:j + 1], B_cols[:, j:j + 1], C_cols[:, j:j + 1], dy[j:j + 1]
      if has_z:
        y_pre = jnp.sum(h * C_j, axis=0, keepdims=True) + (D * u_j if has_d else 0.0)
        dy_j, dz_j = gate_backward(dy_j, y_pre, z[j:j + 1])
        dz = jnp.where(step_ids == j, dz_j, dz)
      dh, du_j, ddelta_j, dA_j, dB_j, dC_j = step_backward(h_prev, h, u_j, delta[j:j + 1], A, B_j, C_j, dy_j, dh)
      if has_d:
        du_j = du_j + D * dy_j
        dD = dD + dy_j * u_j
      ddelta_j = ddelta_j * slope[j:j + 1]  # through softplus and the padding mask, to the raw delta
      if has_bias:
        dbias = dbias + ddelta_j
      dA = dA + dA_j
      du = jnp.where(step_ids == j, du_j, du)
      ddelta = jnp.where(step_ids == j, ddelta_j, ddelta)
      dB = jnp.where(step_ids == j, dB_j.T, dB)
      dC = jnp.where(step_ids == j, dC_j.T, dC)
    r.du[rows, :] = du.astype(r.du.dtype)
    r.ddelta[rows, :] = ddelta.astype(r.ddelta.dtype)
    if has_z:
      r.dz[rows, :] = dz.astype(r.dz.dtype)
    r.dB[rows, :] = dB
    r.dC[rows, :] = dC
    return dh, dA, dD, dbias

  row_zeros = jnp.zeros((1, A.shape[1]), _F32)
  dh, dA, dD, dbias = lax.fori_loop(
      0, ngroups, reverse_group, (r.dstate[...], jnp.zeros(A.shape, _F32), row_zeros, row_zeros)
  )
  r.dstate[...] = dh
  r.dA[...] += dA
  if has_d:
    r.dD[...] += dD
  if has_bias:
    r.dbias[...] += dbias

  @pl.when(step == pl.num_programs(2) - 1)
  def _store_initial_state_cotangent():
    r.dinit[...] = dh


def _compiler_params(block_sizes: ScanTpuBlockSizes):
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=block_sizes.vmem_limit_bytes
  )


def _specs(block_sizes, dstate, reverse_time, nblocks):
  L, eb = block_sizes.block_time, block_sizes.block_channels
  t = (lambda ti: nblocks - 1 - ti) if reverse_time else (lambda ti: ti)
  return dict(
      bte=pl.BlockSpec((None, L, eb), lambda bi, ei, ti: (bi, t(ti), ei)),
      btn=pl.BlockSpec((None, L, dstate), lambda bi, ei, ti: (bi, t(ti), 0)),
      ne=pl.BlockSpec((dstate, eb), lambda bi, ei, ti: (0, ei)),
      row=pl.BlockSpec((1, eb), lambda bi, ei, ti: (0, ei)),
      bne=pl.BlockSpec((None, dstate, eb), lambda bi, ei, ti: (bi, 0, ei)),
      brow=pl.BlockSpec((None, 1, eb), lambda bi, ei, ti: (bi, 0, ei)),
      entry=pl.BlockSpec((None, None, dstate, eb), lambda bi, ei, ti: (bi, t(ti), 0, ei)),
      per_channel_block_btn=pl.BlockSpec((None, None, L, dstate), lambda bi, ei, ti: (bi, ei, t(ti), 0)),
  )


def _optional_inputs(D, z, bias, specs):
  inputs, in_specs = [], []
  for value, spec in ((D, "row"), (z, "bte"), (bias, "row")):
    if value is not None:
      inputs.append(value.reshape(1, -1) if spec == "row" else value)
      in_specs.append(specs[spec])
  return inputs, in_specs


def forward(u, delta, A, B, C, D, z, bias, initial_state, *, seqlen, softplus, block_sizes: ScanTpuBlockSizes,
            interpret, save_residuals):
  """The forward kernel on padded inputs.

  Args:
    u, delta: [b, T, E] with T a multiple of block_time and E of block_channels. A: [E, N] f32. B, C: [b, T, N].
    D, bias: [E] f32 or None. z: [b, T, E] or None. initial_state: [b, E, N] f32 or None.
    seqlen: the real length (later steps are padding). softplus: apply softplus to delta + bias.
    block_sizes: resolved `ScanTpuBlockSizes`. interpret: `pallas_call`'s. save_residuals: also return what
      `backward` needs.

  Returns:
    (y [b, T, E] in u.dtype, final_state [b, E, N] f32, residuals or None).
  """
  batch, padded_len, d_inner = u.shape
  dstate = A.shape[1]
  L, eb = block_sizes.block_time, block_sizes.block_channels
  nblocks = padded_len // L
  specs = _specs(block_sizes, dstate, False, nblocks)
  inputs = [u, delta, A.T, B, C]
  in_specs = [specs["bte"], specs["bte"], specs["ne"], specs["btn"], specs["btn"]]
  more, more_specs = _optional_inputs(D, z, bias, specs)
  inputs += more
  in_specs += more_specs
  if initial_state is not None:
    inputs.append(jnp.swapaxes(initial_state, 1, 2))
    in_specs.append(specs["bne"])
  out_shape = [common.out_struct((batch, padded_len, d_inner), u.dtype, *inputs),
               common.out_struct((batch, dstate, d_inner), _F32, *inputs)]
  out_specs = [specs["bte"], specs["bne"]]
  if save_residuals:
    out_shape.append(common.out_struct((batch, nblocks, dstate, d_inner), _F32, *inputs))
    out_specs.append(specs["entry"])
  kernel = functools.partial(_forward_kernel, seqlen=seqlen, softplus=softplus, has_d=D is not None,
                             has_z=z is not None, has_bias=bias is not None, has_init=initial_state is not None,
                             save_residuals=save_residuals)
  outputs = pl.pallas_call(
      kernel,
      grid=(batch, d_inner // eb, nblocks),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((dstate, eb), _F32)],
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=6 * batch * padded_len * d_inner * dstate,
          transcendentals=batch * padded_len * d_inner * (dstate + 2),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + u.size * u.dtype.itemsize,
      ),
      interpret=interpret,
      name="selective_scan_forward_tpu",
  )(*inputs)
  return outputs[0], jnp.swapaxes(outputs[1], 1, 2), (outputs[2] if save_residuals else None)


def backward(u, delta, A, B, C, D, z, bias, residuals, dy, dfinal_state, *, seqlen, softplus,
             block_sizes: ScanTpuBlockSizes, interpret):
  """The backward kernel: cotangents of every input of `forward`.

  Returns:
    (du [b, T, E], ddelta (of the raw delta) [b, T, E], dA [E, N] f32, dB [b, T, N] f32, dC [b, T, N] f32,
    dD [E] f32 or None, dz [b, T, E] or None, dbias [E] f32 or None, dinitial_state [b, E, N] f32).
  """
  batch, padded_len, d_inner = u.shape
  dstate = A.shape[1]
  L, eb = block_sizes.block_time, block_sizes.block_channels
  nblocks, nchannel_blocks = padded_len // L, d_inner // eb
  has_d, has_z, has_bias = D is not None, z is not None, bias is not None
  specs = _specs(block_sizes, dstate, True, nblocks)
  inputs = [u, delta, A.T, B, C]
  in_specs = [specs["bte"], specs["bte"], specs["ne"], specs["btn"], specs["btn"]]
  more, more_specs = _optional_inputs(D, z, bias, specs)
  inputs += more + [residuals, dy, jnp.swapaxes(dfinal_state, 1, 2)]
  in_specs += more_specs + [specs["entry"], specs["bte"], specs["bne"]]
  struct = lambda shape, dtype: common.out_struct(shape, dtype, *inputs)  # noqa: E731
  out_shape = [struct(u.shape, u.dtype), struct(delta.shape, delta.dtype)]
  out_specs = [specs["bte"], specs["bte"]]
  if has_z:
    out_shape.append(struct(z.shape, z.dtype))
    out_specs.append(specs["bte"])
  out_shape += [struct((batch, nchannel_blocks, padded_len, dstate), _F32)] * 2
  out_specs += [specs["per_channel_block_btn"]] * 2
  out_shape.append(struct((batch, dstate, d_inner), _F32))
  out_specs.append(specs["bne"])
  for present in (has_d, has_bias):
    if present:
      out_shape.append(struct((batch, 1, d_inner), _F32))
      out_specs.append(specs["brow"])
  out_shape.append(struct((batch, dstate, d_inner), _F32))
  out_specs.append(specs["bne"])
  kernel = functools.partial(_backward_kernel, seqlen=seqlen, softplus=softplus, has_d=has_d, has_z=has_z,
                             has_bias=has_bias)
  outputs = list(pl.pallas_call(
      kernel,
      grid=(batch, nchannel_blocks, nblocks),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((dstate, eb), _F32), pltpu.VMEM((L, dstate, eb), _F32)],
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=20 * batch * padded_len * d_inner * dstate,
          transcendentals=2 * batch * padded_len * d_inner * (dstate + 2),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + 3 * u.size * u.dtype.itemsize,
      ),
      interpret=interpret,
      name="selective_scan_backward_tpu",
  )(*inputs))
  du, ddelta = outputs.pop(0), outputs.pop(0)
  dz = outputs.pop(0) if has_z else None
  dB, dC, dA = outputs.pop(0).sum(axis=1), outputs.pop(0).sum(axis=1), outputs.pop(0).sum(axis=0).T
  dD = outputs.pop(0).sum(axis=(0, 1)) if has_d else None
  dbias = outputs.pop(0).sum(axis=(0, 1)) if has_bias else None
  dinit = jnp.swapaxes(outputs.pop(0), 1, 2)
  return du, ddelta, dA, dB, dC, dD, dz, dbias, dinit
