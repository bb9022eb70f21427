"""Pure-jnp Mamba-1 selective scan: the sequential oracle and a `lax.associative_scan` version.

Notation (Mamba-2 paper letters; lower case in einsum strings):

  b  batch      t  sequence length T      e  channels E (`d_inner`)      n  state size N (`dstate`)

Both functions compute, for every channel e (diagonal A per channel, B and C shared by all channels):

  delta = delta + delta_bias (if given), then softplus(delta) if delta_softplus
  h_t = exp(delta_t * A) * h_{t-1} + (delta_t * u_t) * B_t        h: [e, n], h_0 = initial_state (zeros if None)
  y_t = h_t · C_t + D * u_t;  y = y * silu(z) if z is given

and return `(y, final_state)` with `y` [b, t, e] in u's dtype and `final_state` = h_T [b, e, n] in float32. Everything
is computed in float32. Neither function validates its arguments: `pallas_kernels.selective_scan` does that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["selective_scan_associative", "selective_scan_reference"]

_F32 = jnp.float32


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
  """Casts to float32 and applies delta_bias / softplus; returns (u, delta, A, B, C)."""
  delta_bte = delta.astype(_F32)
  if delta_bias is not None:
    delta_bte = delta_bte + delta_bias.astype(_F32)
  if delta_softplus:
    delta_bte = jax.nn.softplus(delta_bte)
  return u.astype(_F32), delta_bte, A.astype(_F32), B.astype(_F32), C.astype(_F32)


def _finish(y_bte, u, u_bte, D, z):
  """Adds the D skip, applies the silu(z) gate and casts to u's dtype."""
  if D is not None:
    y_bte = y_bte + D.astype(_F32) * u_bte
  if z is not None:
    y_bte = y_bte * jax.nn.silu(z.astype(_F32))
  return y_bte.astype(u.dtype)


def selective_scan_reference(
    u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None
):
  """The oracle: a sequential `lax.scan` over time (mamba_ssm `selective_scan_ref`).

  Args:
    u, delta: [b, t, e].
    A: [e, n], negative.
    B, C: [b, t, n].
    D: optional [e]. z: optional [b, t, e] gate. delta_bias: optional [e].
    delta_softplus: apply softplus to delta (after adding delta_bias).
    initial_state: optional [b, e, n].

  Returns:
    (y [b, t, e] in u.dtype, final_state [b, e, n] float32).
  """
  u_bte, delta_bte, A_en, B_btn, C_btn = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
  batch, _, d_inner = u.shape
  dstate = A.shape[1]
  if initial_state is None:
    state_ben = jnp.zeros((batch, d_inner, dstate), _F32)
  else:
    state_ben = initial_state.astype(_F32)

  def step(state_ben, inputs):
    u_be, delta_be, B_bn, C_bn = inputs
    decay_ben = jnp.exp(delta_be[..., None] * A_en)
    state_ben = decay_ben * state_ben + (delta_be * u_be)[..., None] * B_bn[:, None, :]
    y_be = jnp.einsum("ben,bn->be", state_ben, C_bn, precision=lax.Precision.HIGHEST)
    return state_ben, y_be

  time_major = [jnp.moveaxis(a, 1, 0) for a in (u_bte, delta_bte, B_btn, C_btn)]
  final_state, y_tbe = lax.scan(step, state_ben, time_major)
  return _finish(jnp.moveaxis(y_tbe, 0, 1), u, u_bte, D, z), final_state


def selective_scan_associative(
    u, delta, A, B, C, *, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None
):
  """The same recurrence as a parallel prefix scan (`lax.associative_scan`) over time.

  Each step is the affine map h -> a_t * h + b_t with a_t = exp(delta_t * A) and b_t = (delta_t * u_t) * B_t;
  composing (a1, b1) then (a2, b2) gives (a1 * a2, a2 * b1 + b2). The initial state is folded into the first step
  (b_1 += a_1 * h_0). All a_t are in (0, 1], so the products cannot overflow. This materialises [b, t, e, n]
  float32, which is what the Pallas kernel will avoid.

  Args and returns: as `selective_scan_reference`.
  """
  u_bte, delta_bte, A_en, B_btn, C_btn = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
  decay_bten = jnp.exp(delta_bte[..., None] * A_en)
  update_bten = (delta_bte * u_bte)[..., None] * B_btn[:, :, None, :]
  if initial_state is not None:
    update_bten = update_bten.at[:, 0].add(decay_bten[:, 0] * initial_state.astype(_F32))

  def combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2

  _, states_bten = lax.associative_scan(combine, (decay_bten, update_bten), axis=1)
  y_bte = jnp.einsum("bten,btn->bte", states_bten, C_btn)
  return _finish(y_bte, u, u_bte, D, z), states_bten[:, -1]
