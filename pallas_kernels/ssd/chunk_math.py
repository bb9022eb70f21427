"""The SSD math of one chunk and one head, forward and backward, on values already loaded into a kernel.

Both Pallas kernels (`pallas_tpu`, Mosaic; `pallas_gpu`, Triton) call these functions inside their bodies, so the
arithmetic is written once and only the loads, stores and loops differ per backend. Only operations both lowerings
support are used: 2-D `dot_general` (plain, lhs- or rhs-transposed), 2-D transposes, elementwise ops, `where`, and
2-D sums with `keepdims`.

Notation (as `pallas_kernels.ssd.reference`): inside one chunk of Q positions, l is a target and s a source position;
P head dim, N state size. Per chunk and head the kernels are given

  x [Q, P], B, C [Q, N]        the inputs (x, B, C in the input dtype: bf16 or f32)
  dt, a                        the step sizes and the inclusive cumsum of dt * A inside the chunk (float32), as
                               columns [Q, 1] (`*_col`) and rows [1, Q] (`*_row`); `a_last` [1, 1] = a[Q - 1]
  state [P, N]                 the state entering the chunk (float32)

and the chunk computes (with X_s = dt_s x_s, L_ls = exp(a_l - a_s) for s <= l, else 0)

  y_l   = sum_{s <= l} (C_l · B_s) L_ls X_s + exp(a_l) state C_l                   (the D skip is added by the caller)
  state' = exp(a_last) state + sum_s exp(a_last - a_s) X_s ⊗ B_s.

Matmul operands are cast to the input dtype (f32 matmuls run at full precision, bf16 ones accumulate in f32), as
mamba_ssm's Triton kernels do, except in the chunk -> state update (see `_dot_exact_rhs`), so that the float32 state
stays float32-accurate; decays, exponentials, states and accumulators are float32.

Positions padded onto a chunk (by the callers, to reach a tile-legal chunk length) have dt = 0 and x = B = C = 0:
they neither decay nor feed the state, and their cumsum repeats the last real one, so `a_last` is unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["chunk_backward", "chunk_forward", "chunk_scores"]

_F32 = jnp.float32


def _dot(a, b, contract_a: int = 1, contract_b: int = 0):
  """2-D matmul contracting a's axis `contract_a` with b's axis `contract_b`, accumulating in float32.

  Float32 operands are multiplied at full precision (Mosaic's multi-pass f32 matmul, Triton's IEEE mode), so the
  kernels match the float32 references; lower-precision operands use the native MXU / tensor-core path.
  """
  precision = lax.Precision.HIGHEST if a.dtype == _F32 and b.dtype == _F32 else None
  return lax.dot_general(
      a, b, (((contract_a,), (contract_b,)), ((), ())), precision=precision, preferred_element_type=_F32
  )


def _dot_exact_rhs(a, b_f32, contract_a: int, contract_b: int):
  """`_dot(a, b_f32)` for a float32 `b_f32` and `a` in the input dtype, keeping b's float32 precision.

  With bf16 inputs, b is split into bf16 parts hi + lo (hi = bf16(b), lo = bf16(b - hi)) and multiplied in two bf16
  MXU passes: relative error about 2^-16 instead of bf16's 2^-8, at twice the cost of one pass. Used for the
  chunk -> state matmul, whose rounding would otherwise accumulate in the float32 state across chunks.
  """
  if a.dtype == _F32:
    return _dot(a, b_f32, contract_a, contract_b)
  hi = b_f32.astype(a.dtype)
  lo = (b_f32 - hi.astype(_F32)).astype(a.dtype)
  return _dot(a, hi, contract_a, contract_b) + _dot(a, lo, contract_a, contract_b)


def _masked_decay(segsum, mask):
  """exp(segsum) where `mask`, else 0, without ever exponentiating a masked (possibly large positive) entry."""
  return jnp.where(mask, jnp.exp(jnp.where(mask, segsum, 0.0)), 0.0)


def chunk_scores(C, B):
  """[Q, Q] f32 with entry (l, s) = C_l · B_s. It depends only on the group, so kernels that handle several heads of
  one group compute it once; the backward pass uses its transpose `chunk_scores(B, C)`."""
  return _dot(C, B, 1, 1)


def chunk_forward(x, B, C, dt_col, a_col, dt_row, a_row, a_last, state, scores_ls, causal_ls):
  """One chunk of one head, forward.

  Args:
    x: [Q, P]. B, C: [Q, N]. dt_col, a_col: [Q, 1] f32. dt_row, a_row: [1, Q] f32. a_last: [1, 1] f32 (or a scalar).
    state: [P, N] f32, the state entering the chunk.
    scores_ls: `chunk_scores(C, B)`.
    causal_ls: [Q, Q] bool, True where s <= l (row l, column s).

  Returns:
    (y [Q, P] f32 without the D skip, state leaving the chunk [P, N] f32).
  """
  cdt = x.dtype
  weights_ls = scores_ls * _masked_decay(a_col - a_row, causal_ls) * dt_row
  y_diag = _dot(weights_ls.astype(cdt), x)
  y_off = jnp.exp(a_col) * _dot(C, state.astype(cdt), 1, 1)  # exp(a_l) C_l · state
  to_end_col = jnp.exp(a_last - a_col) * dt_col  # dt_s exp(a_last - a_s), exponent <= 0
  new_state = jnp.exp(a_last) * state + _dot_exact_rhs(x, B.astype(_F32) * to_end_col, 0, 0)  # [P, N]
  return y_diag + y_off, new_state


def chunk_backward(x, B, C, dt_col, a_col, dt_row, a_row, a_last, state, dy, dstate, scores_sl, causal_sl, last_col):
  """One chunk of one head, backward: the vector-Jacobian product of `chunk_forward`.

  Everything pairwise is formed in (source s, target l) orientation, which is what dX and dB contract over; the two
  [Q, Q] transposes below give the (l, s) orientation that dC and the target half of da need.

  Args:
    x, B, C, dt_col, a_col, dt_row, a_row, a_last, state: as `chunk_forward` (state: the state entering the chunk).
    dy: [Q, P], the cotangent of the chunk's y (without the D skip; in any float dtype).
    dstate: [P, N] f32, the cotangent of the state leaving the chunk.
    scores_sl: `chunk_scores(B, C)`, entry (s, l) = B_s · C_l.
    causal_sl: [Q, Q] bool, True where s <= l (row s, column l).
    last_col: [Q, 1] bool, True at the chunk's last position.

  Returns:
    (dx [Q, P] f32 without the D skip, ddt [Q, 1] f32 (through X = dt x only), da [Q, 1] f32 (the cotangent of the
    cumsum a, which the caller turns into dt and A gradients), dB [Q, N] f32, dC [Q, N] f32, dstate entering [P, N]).
  """
  cdt = x.dtype
  dy = dy.astype(cdt)
  exp_a_col = jnp.exp(a_col)
  exp_a_last = jnp.exp(a_last)
  to_end_col = jnp.exp(a_last - a_col)
  dstate_c = dstate.astype(cdt)
  decay_sl = _masked_decay(a_row - a_col, causal_sl)  # exp(a_l - a_s)
  # dX_s = sum_l (C_l · B_s) L_ls dy_l + exp(a_last - a_s) dstate B_s, then dx = dt dX and d(dt) = x · dX.
  dX = _dot((scores_sl * decay_sl).astype(cdt), dy) + to_end_col * _dot(B, dstate_c, 1, 1)
  dx = dt_col * dX
  ddt = jnp.sum(x.astype(_F32) * dX, axis=1, keepdims=True)
  # M_ls = dy_l · x_s enters dB (over targets) and dC (over sources).
  dyx_decay_sl = _dot(x, dy, 1, 1) * decay_sl  # (x_s · dy_l) L_ls
  x_dstate = _dot(x, dstate_c)  # [Q, N]: x_s · dstate
  dB = dt_col * _dot(dyx_decay_sl.astype(cdt), C) + (to_end_col * dt_col) * x_dstate
  weights_ls = (dyx_decay_sl * dt_col).T  # M_ls L_ls dt_s
  dC = _dot(weights_ls.astype(cdt), B) + exp_a_col * _dot(dy, state.astype(cdt))
  # da: each pairwise term T_ls = (C_l · B_s) L_ls dt_s M_ls depends on a_l - a_s.
  terms_sl = scores_sl * dyx_decay_sl * dt_col
  da = jnp.sum(terms_sl.T, axis=1, keepdims=True) - jnp.sum(terms_sl, axis=1, keepdims=True)
  # ... the state entering the chunk reaches y_l through exp(a_l) ...
  da = da + exp_a_col * jnp.sum(dy.astype(_F32) * _dot(C, state.astype(cdt), 1, 1), axis=1, keepdims=True)
  # ... and the state leaving it depends on a_last - a_s (each source) and on a_last (the carried-in state).
  from_source_col = to_end_col * dt_col * jnp.sum(x_dstate * B.astype(_F32), axis=1, keepdims=True)
  at_last = exp_a_last * jnp.sum(jnp.sum(dstate * state, axis=1, keepdims=True), axis=0, keepdims=True)
  at_last = at_last + jnp.sum(from_source_col, axis=0, keepdims=True)
  da = da - from_source_col + jnp.where(last_col, at_last, 0.0)
  dstate_in = exp_a_last * dstate + _dot(dy, (exp_a_col * C).astype(cdt), 0, 0)  # [P, N]
  return dx, ddt, da, dB, dC, dstate_in
