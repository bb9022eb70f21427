"""The Pallas SSD: a `custom_vjp` around the forward and backward kernels of one backend, with the jnp work around them.

`ssd_pallas` runs, for a `PallasTarget` (TPU Mosaic or GPU Triton, native or interpret):

  prologue   dt -> float32 (bias, softplus and clamp are applied by the caller, `pallas_kernels.ssd.api`; XLA fuses
             them into this prologue, which is where mamba_ssm's `_chunk_cumsum` kernel fuses them too); the sequence
             is cut into chunks of q = min(chunk_size, T) positions, the last one zero-padded, and each chunk is
             zero-padded to the kernel chunk length Q (`block_sizes.kernel_chunk_length`); a = cumsum(dt * A) inside
             each chunk (the only cumsum, outside the kernels: Mosaic cannot lower one).
  forward    the backend's forward kernel: y (with the D skip and the z gate), the final state, and as residuals
             the state entering every chunk and y before the gate.
  backward   dy -> (dy * silu(z), dz) elementwise; the backend's backward kernel (reverse chunk order, state
             cotangent carried on chip) gives dx, d(dt) through dt * x, the cotangent of a, dB, dC and
             d(initial_state); the cotangent of a becomes d(dt * A) by a reverse cumsum inside each chunk, hence
             d(dt) += d(dt * A) * A and dA = sum d(dt * A) * dt; the D skip adds D * dy to dx and dD = sum dy * x.

Padded positions have dt = 0 and x = B = C = 0: they neither decay nor feed the state, so the state and all
gradients of real positions are exact; padded outputs are sliced off.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.ssd import block_sizes as block_sizes_lib
from pallas_kernels.ssd import pallas_gpu, pallas_tpu

__all__ = ["ssd_pallas"]

_F32 = jnp.float32
_BACKENDS = {"tpu": pallas_tpu, "gpu": pallas_gpu}


def ssd_pallas(x, dt, A, B, C, *, chunk_size, D=None, z=None, initial_state=None, target: common.PallasTarget,
               block_sizes=None):
  """The SSD through the Pallas kernels of `target`; arguments as `pallas_kernels.ssd` (dt already processed).

  Returns:
    (y [b, t, h, p] in x.dtype, final_state [b, h, p, n] float32).
  """
  nheads, ngroups = x.shape[2], B.shape[2]
  if block_sizes is None:
    block_sizes = block_sizes_lib.default_block_sizes(target.platform)
  expected = type(block_sizes_lib.default_block_sizes(target.platform))
  if not isinstance(block_sizes, expected):
    raise ValueError(f"block_sizes for the {target.platform} kernel must be a {expected.__name__}, "
                     f"got {type(block_sizes).__name__}")
  block_sizes = block_sizes.resolve(nheads, ngroups)
  if x.shape[1] == 0:  # nothing to scan: the state passes through
    final = jnp.zeros((x.shape[0], nheads, x.shape[3], B.shape[3]), _F32) if initial_state is None else initial_state
    return x, final.astype(_F32)
  return _ssd(*common.vary_alike(x, dt, A, B, C, D, z, initial_state), chunk_size, target, block_sizes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _ssd(x, dt, A, B, C, D, z, initial_state, chunk_size, target, block_sizes):
  y, final_state, _ = _forward(x, dt, A, B, C, D, z, initial_state, chunk_size, target, block_sizes, False)
  return y, final_state


def _ssd_fwd(x, dt, A, B, C, D, z, initial_state, chunk_size, target, block_sizes):
  y, final_state, residuals = _forward(x, dt, A, B, C, D, z, initial_state, chunk_size, target, block_sizes, True)
  return (y, final_state), (x, dt, A, B, C, D, z, initial_state, residuals)


def _ssd_bwd(chunk_size, target, block_sizes, saved, cotangents):
  x, dt, A, B, C, D, z, initial_state, (y_pre, chunk_states) = saved
  dy, dfinal_state = cotangents
  layout = _Layout(x.shape[1], chunk_size, target.platform, x.dtype.itemsize)
  dt_k, a_k, A32 = _prologue_dt(dt, A, layout)
  dy = dy.astype(_F32)
  dz = None
  if z is not None:
    z32 = z.astype(_F32)
    sig = jax.nn.sigmoid(z32)
    dz = (dy * y_pre.astype(_F32) * sig * (1.0 + z32 * (1.0 - sig))).astype(z.dtype)
    dy = dy * z32 * sig  # the cotangent of y before the gate
  dx_k, ddt_k, da_k, dB_k, dC_k, dinit = _BACKENDS[target.platform].backward(
      layout.to_kernel(x), layout.to_kernel(B), layout.to_kernel(C), dt_k, a_k, chunk_states,
      layout.to_kernel(dy), dfinal_state.astype(_F32),
      chunk=layout.kernel_chunk, block_sizes=block_sizes, interpret=target.interpret_arg,
  )
  # d(dt * A) at position s is the sum of da over the positions l >= s of its chunk (a is an inclusive cumsum).
  d_dtA = jnp.flip(jnp.cumsum(jnp.flip(layout.chunked(da_k), axis=2), axis=2), axis=2).reshape(da_k.shape)
  ddt = layout.from_kernel(ddt_k + d_dtA * A32)
  dA = jnp.sum(d_dtA * dt_k, axis=(0, 1))
  dx = layout.from_kernel(dx_k).astype(_F32)
  dD = None
  if D is not None:
    dx = dx + D.astype(_F32)[:, None] * dy
    dD = jnp.sum(dy * x.astype(_F32), axis=(0, 1, 3)).astype(D.dtype)
  dinit = None if initial_state is None else dinit.astype(initial_state.dtype)
  return (dx.astype(x.dtype), ddt.astype(dt.dtype), dA.astype(A.dtype), layout.from_kernel(dB_k).astype(B.dtype),
          layout.from_kernel(dC_k).astype(C.dtype), dD, dz, dinit)


_ssd.defvjp(_ssd_fwd, _ssd_bwd)


def _forward(x, dt, A, B, C, D, z, initial_state, chunk_size, target, block_sizes, save_residuals):
  layout = _Layout(x.shape[1], chunk_size, target.platform, x.dtype.itemsize)
  dt_k, a_k, _ = _prologue_dt(dt, A, layout)
  y_k, final_state, y_pre_k, chunk_states = _BACKENDS[target.platform].forward(
      layout.to_kernel(x), layout.to_kernel(B), layout.to_kernel(C), dt_k, a_k,
      None if D is None else D.astype(_F32), None if z is None else layout.to_kernel(z), initial_state,
      chunk=layout.kernel_chunk, block_sizes=block_sizes, interpret=target.interpret_arg,
      save_residuals=save_residuals,
  )
  y_pre = None if y_pre_k is None else layout.from_kernel(y_pre_k)
  return layout.from_kernel(y_k), final_state, (y_pre, chunk_states)


def _prologue_dt(dt, A, layout):
  """dt in the kernel layout (float32) and a = cumsum(dt * A) inside each kernel chunk."""
  dt_k = layout.to_kernel(dt.astype(_F32))
  A32 = A.astype(_F32)
  a_k = jnp.cumsum(layout.chunked(dt_k * A32), axis=2).reshape(dt_k.shape)
  return dt_k, a_k, A32


class _Layout:
  """Maps [b, t, ...] arrays to the kernel layout [b, c * Q, ...] (chunks of q real positions, each zero-padded to
  the kernel chunk length Q) and back."""

  def __init__(self, seqlen: int, chunk_size: int, platform: str, itemsize: int):
    self.seqlen = seqlen
    self.chunk = max(1, min(chunk_size, seqlen))  # a sequence shorter than a chunk is one chunk of its own length
    self.nchunks = -(-seqlen // self.chunk)
    self.kernel_chunk = block_sizes_lib.kernel_chunk_length(platform, self.chunk, itemsize)

  def chunked(self, a):  # [b, c * Q, ...] -> [b, c, Q, ...]
    return a.reshape(a.shape[0], self.nchunks, self.kernel_chunk, *a.shape[2:])

  def to_kernel(self, a):
    a = common.pad_axis_to(a, self.nchunks * self.chunk, axis=1)
    a = a.reshape(a.shape[0], self.nchunks, self.chunk, *a.shape[2:])
    a = common.pad_axis_to(a, self.kernel_chunk, axis=2)
    return a.reshape(a.shape[0], self.nchunks * self.kernel_chunk, *a.shape[3:])

  def from_kernel(self, a):
    a = self.chunked(a)[:, :, :self.chunk]
    return a.reshape(a.shape[0], self.nchunks * self.chunk, *a.shape[3:])[:, :self.seqlen]
