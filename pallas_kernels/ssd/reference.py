"""Pure-jnp Mamba-2 SSD (state space duality): the sequential oracle and the chunked algorithm.

Notation (Mamba-2 paper letters; lower case in einsum strings):

  b  batch            t  sequence length T       q  chunk length Q (`chunk_size`)
  c  number of chunks C = ceil(T / Q)            l, s  target / source position inside a chunk (both range over Q)
  h  heads H          p  head dim P              g  groups G (of B and C)
  r  heads per group R = H / G (head h = g * R + r uses group g = h // R)
  n  state size N (`dstate`)

Both functions compute, for every head h (scalar decay per head, mamba_ssm chunk-scan convention),

  S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t ⊗ B_t        S: [p, n], S_0 = initial_state (zeros if None)
  y_t = S_t · C_t + D * x_t

and return `(y, final_state)` with `y` [b, t, h, p] in x's dtype and `final_state` = S_T [b, h, p, n] in float32.
Decay cumsums, exponentials and states are float32 whatever the input dtype. Neither function validates its
arguments: `pallas_kernels.ssd` does that before calling them.

`process_dt` (bias, softplus, clamp of dt) and `gate` (y * silu(z)) are the optional steps around the scan that
mamba_ssm fuses into its kernels; composed with either function they are the reference for the fused options.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import common

__all__ = ["gate", "process_dt", "ssd_chunked", "ssd_reference"]

_F32 = jnp.float32


def process_dt(dt, *, dt_bias=None, dt_softplus=False, dt_limit=None):
  """dt -> clip(softplus(dt + dt_bias), *dt_limit), each step only if asked for, in float32; dt itself if none is.

  Args:
    dt: [b, t, h]. dt_bias: optional [h]. dt_softplus: apply softplus. dt_limit: optional (low, high) clamp.
  """
  if dt_bias is None and not dt_softplus and dt_limit is None:
    return dt
  dt = dt.astype(_F32)
  if dt_bias is not None:
    dt = dt + dt_bias.astype(_F32)
  if dt_softplus:
    dt = jax.nn.softplus(dt)
  if dt_limit is not None:
    dt = jnp.clip(dt, dt_limit[0], dt_limit[1])
  return dt


def gate(y, z):
  """y * silu(z) computed in float32, in y's dtype; y itself when z is None."""
  if z is None:
    return y
  return (y.astype(_F32) * jax.nn.silu(z.astype(_F32))).astype(y.dtype)


def ssd_reference(x, dt, A, B, C, *, D=None, initial_state=None):
  """The oracle: a sequential `lax.scan` over time of the recurrence in the module docstring.

  Args:
    x: [b, t, h, p].
    dt: [b, t, h], positive (softplus and bias already applied).
    A: [h], negative.
    B, C: [b, t, g, n].
    D: optional [h] skip connection.
    initial_state: optional [b, h, p, n].

  Returns:
    (y [b, t, h, p] in x.dtype, final_state [b, h, p, n] float32).
  """
  batch, _, nheads, headdim = x.shape
  ngroups, dstate = B.shape[2], B.shape[3]
  # Clarity over speed: broadcast B and C from groups to heads (head h uses group h // R).
  B_bthn = jnp.repeat(B.astype(_F32), nheads // ngroups, axis=2)
  C_bthn = jnp.repeat(C.astype(_F32), nheads // ngroups, axis=2)
  x_bthp = x.astype(_F32)
  dt_bth = dt.astype(_F32)
  A_h = A.astype(_F32)
  if initial_state is None:
    state_bhpn = jnp.zeros((batch, nheads, headdim, dstate), _F32)
  else:
    state_bhpn = initial_state.astype(_F32)

  def step(state_bhpn, inputs):
    x_bhp, dt_bh, B_bhn, C_bhn = inputs
    decay_bh = jnp.exp(dt_bh * A_h)
    update_bhpn = (dt_bh[..., None] * x_bhp)[..., None] * B_bhn[:, :, None, :]
    state_bhpn = decay_bh[..., None, None] * state_bhpn + update_bhpn
    y_bhp = jnp.einsum("bhpn,bhn->bhp", state_bhpn, C_bhn, precision=lax.Precision.HIGHEST)
    return state_bhpn, y_bhp

  time_major = [jnp.moveaxis(a, 1, 0) for a in (x_bthp, dt_bth, B_bthn, C_bthn)]
  final_state, y_tbhp = lax.scan(step, state_bhpn, time_major)
  y_bthp = jnp.moveaxis(y_tbhp, 0, 1)
  if D is not None:
    y_bthp = y_bthp + D.astype(_F32)[:, None] * x_bthp
  return y_bthp.astype(x.dtype), final_state


def ssd_chunked(x, dt, A, B, C, *, chunk_size, D=None, initial_state=None):
  """The four-step chunked SSD algorithm (SPEC §4.3, "Listing 1" of the Mamba-2 paper), grouped by B/C group.

  The sequence is zero-padded to a multiple of `chunk_size` (dt = 0 and x = 0 there, so the padded steps have
  decay exp(0) = 1 and no input: the state passes through unchanged) and the output is sliced back; a sequence
  shorter than `chunk_size` is a single chunk of its own length. Heads are reshaped to [g, r] so that B and C are
  never repeated to heads and C·Bᵀ is computed once per group.

  Args:
    x: [b, t, h, p].
    dt: [b, t, h], positive (softplus and bias already applied).
    A: [h], negative.
    B, C: [b, t, g, n].
    chunk_size: Q, a positive int.
    D: optional [h] skip connection.
    initial_state: optional [b, h, p, n].

  Returns:
    (y [b, t, h, p] in x.dtype, final_state [b, h, p, n] float32).
  """
  batch, seqlen, nheads, headdim = x.shape
  ngroups, dstate = B.shape[2], B.shape[3]
  heads_per_group = nheads // ngroups
  # A sequence shorter than one chunk is one chunk of its own length (e.g. a short prefill): same result, no padding.
  q = max(1, min(chunk_size, seqlen))

  def to_chunks(a):  # [b, t, ...] -> [b, c, q, ...] after zero-padding t to a multiple of q.
    a = common.pad_axis_to_multiple(a, q, axis=1)
    return a.reshape(batch, a.shape[1] // q, q, *a.shape[2:])

  nchunks = -(-seqlen // q)
  x_bclgrp = to_chunks(x.astype(_F32)).reshape(batch, nchunks, q, ngroups, heads_per_group, headdim)
  dt_bclgr = to_chunks(dt.astype(_F32)).reshape(batch, nchunks, q, ngroups, heads_per_group)
  B_bclgn = to_chunks(B.astype(_F32))
  C_bclgn = to_chunks(C.astype(_F32))
  A_gr = A.astype(_F32).reshape(ngroups, heads_per_group)

  # Discretised input X = dt * x and log-decay a = dt * A, with its inclusive cumsum inside each chunk.
  xdt_bclgrp = x_bclgrp * dt_bclgr[..., None]
  a_cumsum_bclgr = jnp.cumsum(dt_bclgr * A_gr, axis=2)

  # 1) Intra-chunk (diagonal blocks): y_l += sum_{s <= l} (C_l · B_s) exp(a_cs[l] - a_cs[s]) X_s.
  # The decay exp(segsum) is formed as a difference of cumsums (what the mamba_ssm kernels do). Above the
  # diagonal (s > l) the difference is positive and exp could overflow; those entries are replaced by 0 *before*
  # the exp and zeroed after, so neither the forward nor the backward pass ever sees inf (no 0 * inf = NaN).
  causal_ls = jnp.tril(jnp.ones((q, q), dtype=bool))[:, :, None, None]
  segsum_bclsgr = a_cumsum_bclgr[:, :, :, None] - a_cumsum_bclgr[:, :, None, :]
  segsum_bclsgr = jnp.where(causal_ls, segsum_bclsgr, 0.0)
  decay_bclsgr = jnp.where(causal_ls, jnp.exp(segsum_bclsgr), 0.0)
  scores_bclsg = jnp.einsum("bclgn,bcsgn->bclsg", C_bclgn, B_bclgn)  # C·Bᵀ once per group, shared by its heads.
  y_diag_bclgrp = jnp.einsum("bclsgr,bcsgrp->bclgrp", scores_bclsg[..., None] * decay_bclsgr, xdt_bclgrp)

  # 2) The state each chunk produces on its own (zero state at the chunk start), at the end of the chunk.
  decay_to_end_bclgr = jnp.exp(a_cumsum_bclgr[:, :, -1:] - a_cumsum_bclgr)  # exponent <= 0: no masking needed.
  chunk_states_bcgrpn = jnp.einsum("bclgn,bclgrp->bcgrpn", B_bclgn, xdt_bclgrp * decay_to_end_bclgr[..., None])

  # 3) Inter-chunk recurrence: S_c = exp(sum of a over chunk c) * S_{c-1} + chunk_states_c.
  # A `lax.scan` over chunks rather than the C x C segsum matrix of the paper's listing: the scan does O(C·HPN)
  # work and keeps only the per-chunk states it has to emit anyway, while the matrix form does O(C²·HPN) work,
  # which dominates for long sequences (T = 128k, Q = 256 gives C = 512). The sequential depth C = T / Q is
  # small and each step is elementwise; mamba_ssm's `_state_passing_fwd` is sequential over chunks as well.
  chunk_decay_cbgr = jnp.moveaxis(jnp.exp(a_cumsum_bclgr[:, :, -1]), 1, 0)
  if initial_state is None:
    state_bgrpn = jnp.zeros((batch, ngroups, heads_per_group, headdim, dstate), _F32)
  else:
    state_bgrpn = initial_state.astype(_F32).reshape(batch, ngroups, heads_per_group, headdim, dstate)

  def pass_state(state_bgrpn, inputs):
    chunk_decay_bgr, chunk_state_bgrpn = inputs
    next_state_bgrpn = chunk_decay_bgr[..., None, None] * state_bgrpn + chunk_state_bgrpn
    return next_state_bgrpn, state_bgrpn  # emit the state entering this chunk

  final_state_bgrpn, states_in_cbgrpn = lax.scan(
      pass_state, state_bgrpn, (chunk_decay_cbgr, jnp.moveaxis(chunk_states_bcgrpn, 1, 0))
  )
  states_in_bcgrpn = jnp.moveaxis(states_in_cbgrpn, 0, 1)

  # 4) State entering each chunk -> outputs: y_l += exp(a_cs[l]) C_l · S_{c-1}.
  y_off_bclgrp = jnp.einsum("bclgn,bcgrpn->bclgrp", C_bclgn, states_in_bcgrpn) * jnp.exp(a_cumsum_bclgr)[..., None]

  y_bthp = (y_diag_bclgrp + y_off_bclgrp).reshape(batch, nchunks * q, nheads, headdim)[:, :seqlen]
  if D is not None:
    y_bthp = y_bthp + D.astype(_F32)[:, None] * x.astype(_F32)
  final_state_bhpn = final_state_bgrpn.reshape(batch, nheads, headdim, dstate)
  return y_bthp.astype(x.dtype), final_state_bhpn
