"""The Pallas selective scan: a `custom_vjp` around the forward and backward kernels of one backend.

`selective_scan_pallas` pads the inputs (time to a multiple of the time block, channels to a multiple of the
channel block; padded time steps are masked to delta = 0 inside the kernels, so they leave the state unchanged
whatever delta_bias and softplus make of a zero), runs the backend's forward kernel (which fuses delta_bias +
softplus, the D skip and the z gate, and saves the state entering every time block), and slices the outputs back.
The backward kernel returns the cotangents of every input, including the raw delta, delta_bias, D and z.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.selective_scan import block_sizes as block_sizes_lib
from pallas_kernels.selective_scan import pallas_gpu, pallas_tpu

__all__ = ["selective_scan_pallas"]

_F32 = jnp.float32
_BACKENDS = {"tpu": pallas_tpu, "gpu": pallas_gpu}


def selective_scan_pallas(u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, target: common.PallasTarget, block_sizes=None):
  """The selective scan through the Pallas kernels of `target`; arguments as `pallas_kernels.selective_scan`.

  Returns:
    (y [b, t, e] in u.dtype, final_state [b, e, n] float32).
  """
  seqlen, d_inner, dstate = u.shape[1], u.shape[2], A.shape[1]
  if block_sizes is None:
    block_sizes = block_sizes_lib.default_block_sizes(target.platform)
  expected = type(block_sizes_lib.default_block_sizes(target.platform))
  if not isinstance(block_sizes, expected):
    raise ValueError(f"block_sizes for the {target.platform} kernel must be a {expected.__name__}, "
                     f"got {type(block_sizes).__name__}")
  block_sizes = block_sizes.resolve(seqlen, d_inner, dstate)
  args = common.vary_alike(u, delta, A, B, C, D, z, delta_bias, initial_state)
  return _scan(*args, bool(delta_softplus), target, block_sizes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11))
def _scan(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, target, block_sizes):
  y, final_state, _ = _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, target, block_sizes,
                               False)
  return y, final_state


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, target, block_sizes):
  y, final_state, residuals = _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, target,
                                       block_sizes, True)
  return (y, final_state), (u, delta, A, B, C, D, z, delta_bias, initial_state, residuals)


def _scan_bwd(softplus, target, block_sizes, saved, cotangents):
  u, delta, A, B, C, D, z, delta_bias, initial_state, residuals = saved
  dy, dfinal_state = cotangents
  pad = _Padding(u.shape[1], u.shape[2], block_sizes)
  du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = _BACKENDS[target.platform].backward(
      *pad.inputs(u, delta, A, B, C, D, z, delta_bias), residuals, pad.bte(dy),
      pad.channels(dfinal_state.astype(_F32), 1),
      seqlen=u.shape[1], softplus=softplus, block_sizes=block_sizes, interpret=target.interpret_arg,
  )
  cast = lambda g, like: None if like is None else g.astype(like.dtype)  # noqa: E731
  return (cast(pad.unpad_bte(du), u), cast(pad.unpad_bte(ddelta), delta), cast(dA[:pad.d_inner], A),
          cast(dB[:, :pad.seqlen], B), cast(dC[:, :pad.seqlen], C),
          None if D is None else cast(dD[:pad.d_inner], D), None if z is None else cast(pad.unpad_bte(dz), z),
          None if delta_bias is None else cast(dbias[:pad.d_inner], delta_bias),
          None if initial_state is None else cast(dinit[:, :pad.d_inner], initial_state))


_scan.defvjp(_scan_fwd, _scan_bwd)


def _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, target, block_sizes, save_residuals):
  pad = _Padding(u.shape[1], u.shape[2], block_sizes)
  y, final_state, residuals = _BACKENDS[target.platform].forward(
      *pad.inputs(u, delta, A, B, C, D, z, delta_bias),
      None if initial_state is None else pad.channels(initial_state.astype(_F32), 1),
      seqlen=u.shape[1], softplus=softplus, block_sizes=block_sizes, interpret=target.interpret_arg,
      save_residuals=save_residuals,
  )
  return pad.unpad_bte(y), final_state[:, :pad.d_inner], residuals


class _Padding:
  """Zero-pads time to a multiple of `block_time` and channels to a multiple of `block_channels`, and back."""

  def __init__(self, seqlen, d_inner, block_sizes):
    self.seqlen, self.d_inner = seqlen, d_inner
    self.padded_len = common.round_up(seqlen, block_sizes.block_time)
    self.padded_inner = common.round_up(d_inner, block_sizes.block_channels)

  def channels(self, a, axis):
    return common.pad_axis_to(a, self.padded_inner, axis)

  def bte(self, a):
    return common.pad_axis_to(self.channels(a, 2), self.padded_len, 1)

  def unpad_bte(self, a):
    return a[:, :self.seqlen, :self.d_inner]

  def inputs(self, u, delta, A, B, C, D, z, delta_bias):
    as_f32 = lambda v: None if v is None else self.channels(v.astype(_F32), 0)  # noqa: E731
    time = lambda v: common.pad_axis_to(v, self.padded_len, 1)  # noqa: E731
    return (self.bte(u), self.bte(delta), self.channels(A.astype(_F32), 0), time(B), time(C), as_f32(D),
            None if z is None else self.bte(z), as_f32(delta_bias))
