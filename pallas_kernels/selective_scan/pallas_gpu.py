"""The Mamba-1 selective-scan forward and backward kernels for GPU (Pallas Triton).

Notation as `pallas_kernels.selective_scan.scan_math`: b batch, T (padded) length, E (padded) channels, N state
size (zero-padded here to a power of two, as Triton tiles must be); L = `block_time`, Eb = `block_channels`.

Design. Grid (b, E / Eb): one program scans the whole sequence for Eb channels, one time step per iteration,
carrying the [N, Eb] float32 state in registers; each step loads a row of u, delta (and z) and of B and C, which
Triton prefetches ahead of the loop (`num_stages`). The forward saves the state at the start of every L-step block
([b, T / L, N, E] residual). The backward walks the blocks in reverse: it recomputes a block's states from the saved
entry state into a global-memory workspace ([L, N, Eb] per program, an extra kernel output that is discarded), waits
for the writes (`debug_barrier`, a CTA-wide barrier; interpret mode runs programs serially and has none), then
walks the block's steps in reverse carrying the state cotangent in registers. dA, dD and d(delta_bias) accumulate in registers over the whole sequence; dB and dC are
written per channel block and summed by the caller.

delta_bias + softplus, the D skip and the z gate are fused in both kernels (as mamba_ssm's CUDA kernel does).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import common
from pallas_kernels.selective_scan.block_sizes import ScanGpuBlockSizes
from pallas_kernels.selective_scan.scan_math import gate_backward, process_delta, silu, step_backward, step_forward

__all__ = ["backward", "forward"]

_F32 = jnp.float32


class _Refs:
  """Named access to a kernel's refs, in the order the wrapper passes them (optional ones only when present)."""

  def __init__(self, refs, names):
    refs = list(refs)
    for name in names:
      if name is not None:
        setattr(self, name, refs.pop(0))
    assert not refs, f"{len(refs)} refs left over"


def _names(has_d, has_z, has_bias, outputs):
  return ["u", "delta", "A", "B", "C", "D" if has_d else None, "z" if has_z else None,
          "bias" if has_bias else None] + outputs


def _step_inputs(r, t, seqlen, softplus, bias):
  """Step t's u, delta and d delta / d raw as rows [1, Eb]; B and C as columns [N, 1]."""
  u = r.u[t, :].astype(_F32)[None, :]
  delta, slope = process_delta(r.delta[t, :].astype(_F32)[None, :], bias, softplus, t < seqlen)
  return u, delta, slope, r.B[t, :].astype(_F32)[:, None], r.C[t, :].astype(_F32)[:, None]


def _forward_kernel(*refs, seqlen, nblocks, softplus, has_d, has_z, has_bias, has_init, save_residuals):
  r = _Refs(refs, _names(has_d, has_z, has_bias, ["init" if has_init else None, "y", "final",
                                                 "entry" if save_residuals else None]))
  block_time = r.u.shape[0] // nblocks
  A = r.A[...].astype(_F32)
  bias = r.bias[...][None, :] if has_bias else None
  D = r.D[...][None, :] if has_d else None

  def block(i, h):
    if save_residuals:
      r.entry[i] = h

    def step(j, h):
      t = i * block_time + j
      u, delta, _, B_col, C_col = _step_inputs(r, t, seqlen, softplus, bias)
      h, y = step_forward(h, u, delta, A, B_col, C_col)
      if has_d:
        y = y + D * u
      if has_z:
        y = y * silu(r.z[t, :].astype(_F32)[None, :])
      r.y[t, :] = y[0].astype(r.y.dtype)
      return h

    return lax.fori_loop(0, block_time, step, h)

  initial = r.init[...].astype(_F32) if has_init else jnp.zeros(A.shape, _F32)
  r.final[...] = lax.fori_loop(0, nblocks, block, initial)


def _backward_kernel(*refs, seqlen, nblocks, softplus, has_d, has_z, has_bias, barriers):
  r = _Refs(refs, _names(has_d, has_z, has_bias, [
      "entry", "dy", "dfinal", "du", "ddelta", "dz" if has_z else None, "dB", "dC", "dA",
      "dD" if has_d else None, "dbias" if has_bias else None, "dinit", "work"]))
  block_time = r.u.shape[0] // nblocks
  A = r.A[...].astype(_F32)
  bias = r.bias[...][None, :] if has_bias else None
  D = r.D[...][None, :] if has_d else None

  def block(k, carry):
    i = nblocks - 1 - k
    entry = r.entry[i]

    def recompute(j, h):
      u, delta, _, B_col, C_col = _step_inputs(r, i * block_time + j, seqlen, softplus, bias)
      h, _ = step_forward(h, u, delta, A, B_col, C_col)
      r.work[j] = h
      return h

    lax.fori_loop(0, block_time, recompute, entry)
    if barriers:  # the workspace writes must be visible to every thread before they are read
      plgpu.debug_barrier()

    def reverse(jj, carry):
      dh, dA, dD, dbias = carry
      j = block_time - 1 - jj
      t = i * block_time + j
      u, delta, slope, B_col, C_col = _step_inputs(r, t, seqlen, softplus, bias)
      h = r.work[j]
      h_prev = jnp.where(j == 0, entry, r.work[jnp.maximum(j - 1, 0)])
      dy = r.dy[t, :].astype(_F32)[None, :]
      if has_z:
        y_pre = jnp.sum(h * C_col, axis=0, keepdims=True) + (D * u if has_d else 0.0)
        dy, dz = gate_backward(dy, y_pre, r.z[t, :].astype(_F32)[None, :])
        r.dz[t, :] = dz[0].astype(r.dz.dtype)
      dh, du, ddelta, dA_t, dB, dC = step_backward(h_prev, h, u, delta, A, B_col, C_col, dy, dh)
      if has_d:
        du = du + D * dy
        dD = dD + dy * u
      ddelta = ddelta * slope  # through softplus and the padding mask, to the raw delta
      if has_bias:
        dbias = dbias + ddelta
      r.du[t, :] = du[0].astype(r.du.dtype)
      r.ddelta[t, :] = ddelta[0].astype(r.ddelta.dtype)
      r.dB[t, :] = dB[:, 0]
      r.dC[t, :] = dC[:, 0]
      return dh, dA + dA_t, dD, dbias

    carry = lax.fori_loop(0, block_time, reverse, carry)
    if barriers:  # the next block overwrites the workspace
      plgpu.debug_barrier()
    return carry

  row_zeros = jnp.zeros((1, A.shape[1]), _F32)
  dh, dA, dD, dbias = lax.fori_loop(
      0, nblocks, block, (r.dfinal[...].astype(_F32), jnp.zeros(A.shape, _F32), row_zeros, row_zeros)
  )
  r.dA[...] = dA
  if has_d:
    r.dD[...] = dD[0]
  if has_bias:
    r.dbias[...] = dbias[0]
  r.dinit[...] = dh


def _compiler_params(block_sizes: ScanGpuBlockSizes):
  return plgpu.CompilerParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)


def _specs(padded_len, n, eb, nblocks):
  return dict(
      bte=pl.BlockSpec((None, padded_len, eb), lambda bi, ei: (bi, 0, ei)),
      btn=pl.BlockSpec((None, padded_len, n), lambda bi, ei: (bi, 0, 0)),
      ne=pl.BlockSpec((n, eb), lambda bi, ei: (0, ei)),
      e=pl.BlockSpec((eb,), lambda bi, ei: (ei,)),
      be=pl.BlockSpec((None, eb), lambda bi, ei: (bi, ei)),
      bne=pl.BlockSpec((None, n, eb), lambda bi, ei: (bi, 0, ei)),
      entry=pl.BlockSpec((None, nblocks, n, eb), lambda bi, ei: (bi, 0, 0, ei)),
      per_channel_block_btn=pl.BlockSpec((None, None, padded_len, n), lambda bi, ei: (bi, ei, 0, 0)),
      work=pl.BlockSpec((None, None, padded_len // nblocks, n, eb), lambda bi, ei: (bi, ei, 0, 0, 0)),
  )


def _common_inputs(u, delta, A, B, C, D, z, bias, specs, n):
  """The inputs both kernels read (state size padded to n, A and states transposed to [N, E])."""
  inputs = [u, delta, common.pad_axis_to(A, n, 1).T, common.pad_axis_to(B, n, 2), common.pad_axis_to(C, n, 2)]
  in_specs = [specs["bte"], specs["bte"], specs["ne"], specs["btn"], specs["btn"]]
  for value, spec in ((D, "e"), (z, "bte"), (bias, "e")):
    if value is not None:
      inputs.append(value)
      in_specs.append(specs[spec])
  return inputs, in_specs


def _state_in(state, n):  # [b, E, N] -> [b, n, E]
  return jnp.swapaxes(common.pad_axis_to(state.astype(_F32), n, 2), 1, 2)


def forward(u, delta, A, B, C, D, z, bias, initial_state, *, seqlen, softplus, block_sizes: ScanGpuBlockSizes,
            interpret, save_residuals):
  """The forward kernel on padded inputs; arguments and results as `pallas_tpu.forward`."""
  batch, padded_len, d_inner = u.shape
  dstate = A.shape[1]
  n, eb = common.next_power_of_2(dstate), block_sizes.block_channels
  nblocks = padded_len // block_sizes.block_time
  specs = _specs(padded_len, n, eb, nblocks)
  inputs, in_specs = _common_inputs(u, delta, A, B, C, D, z, bias, specs, n)
  if initial_state is not None:
    inputs.append(_state_in(initial_state, n))
    in_specs.append(specs["bne"])
  out_shape = [common.out_struct((batch, padded_len, d_inner), u.dtype, *inputs),
               common.out_struct((batch, n, d_inner), _F32, *inputs)]
  out_specs = [specs["bte"], specs["bne"]]
  if save_residuals:
    out_shape.append(common.out_struct((batch, nblocks, n, d_inner), _F32, *inputs))
    out_specs.append(specs["entry"])
  kernel = functools.partial(_forward_kernel, seqlen=seqlen, nblocks=nblocks, softplus=softplus,
                             has_d=D is not None, has_z=z is not None, has_bias=bias is not None,
                             has_init=initial_state is not None, save_residuals=save_residuals)
  outputs = pl.pallas_call(
      kernel,
      grid=(batch, d_inner // eb),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=6 * batch * padded_len * d_inner * dstate,
          transcendentals=batch * padded_len * d_inner * (dstate + 2),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + u.size * u.dtype.itemsize,
      ),
      interpret=interpret,
      name="selective_scan_forward_gpu",
  )(*inputs)
  final_state = jnp.swapaxes(outputs[1], 1, 2)[:, :, :dstate]
  return outputs[0], final_state, (outputs[2] if save_residuals else None)


def backward(u, delta, A, B, C, D, z, bias, residuals, dy, dfinal_state, *, seqlen, softplus,
             block_sizes: ScanGpuBlockSizes, interpret):
  """The backward kernel; arguments and results as `pallas_tpu.backward`."""
  batch, padded_len, d_inner = u.shape
  dstate = A.shape[1]
  n, eb = common.next_power_of_2(dstate), block_sizes.block_channels
  nblocks, nchannel_blocks = padded_len // block_sizes.block_time, d_inner // eb
  has_d, has_z, has_bias = D is not None, z is not None, bias is not None
  specs = _specs(padded_len, n, eb, nblocks)
  inputs, in_specs = _common_inputs(u, delta, A, B, C, D, z, bias, specs, n)
  inputs += [residuals, dy, _state_in(dfinal_state, n)]
  in_specs += [specs["entry"], specs["bte"], specs["bne"]]
  struct = lambda shape, dtype: common.out_struct(shape, dtype, *inputs)  # noqa: E731
  out_shape = [struct(u.shape, u.dtype), struct(delta.shape, delta.dtype)]
  out_specs = [specs["bte"], specs["bte"]]
  if has_z:
    out_shape.append(struct(z.shape, z.dtype))
    out_specs.append(specs["bte"])
  out_shape += [struct((batch, nchannel_blocks, padded_len, n), _F32)] * 2
  out_specs += [specs["per_channel_block_btn"]] * 2
  out_shape.append(struct((batch, n, d_inner), _F32))
  out_specs.append(specs["bne"])
  for present in (has_d, has_bias):
    if present:
      out_shape.append(struct((batch, d_inner), _F32))
      out_specs.append(specs["be"])
  out_shape.append(struct((batch, n, d_inner), _F32))
  out_specs.append(specs["bne"])
  out_shape.append(struct((batch, nchannel_blocks, block_sizes.block_time, n, eb), _F32))  # the workspace
  out_specs.append(specs["work"])
  kernel = functools.partial(_backward_kernel, seqlen=seqlen, nblocks=nblocks, softplus=softplus, has_d=has_d,
                             has_z=has_z, has_bias=has_bias, barriers=not interpret)  # interpret mode runs serially
  outputs = list(pl.pallas_call(
      kernel,
      grid=(batch, nchannel_blocks),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_compiler_params(block_sizes),
      cost_estimate=pl.CostEstimate(
          flops=20 * batch * padded_len * d_inner * dstate,
          transcendentals=2 * batch * padded_len * d_inner * (dstate + 2),
          bytes_accessed=sum(v.size * v.dtype.itemsize for v in inputs) + 3 * u.size * u.dtype.itemsize,
      ),
      interpret=interpret,
      name="selective_scan_backward_gpu",
  )(*inputs))
  du, ddelta = outputs.pop(0), outputs.pop(0)
  dz = outputs.pop(0) if has_z else None
  dB = outputs.pop(0).sum(axis=1)[..., :dstate]
  dC = outputs.pop(0).sum(axis=1)[..., :dstate]
  dA = jnp.swapaxes(outputs.pop(0).sum(axis=0), 0, 1)[:, :dstate]
  dD = outputs.pop(0).sum(axis=0) if has_d else None
  dbias = outputs.pop(0).sum(axis=0) if has_bias else None
  dinit = jnp.swapaxes(outputs.pop(0), 1, 2)[:, :, :dstate]
  return du, ddelta, dA, dB, dC, dD, dz, dbias, dinit
