"""The Mamba-1 selective scan math of one time step, forward and backward, on values already loaded into a kernel.

Both Pallas kernels (`pallas_tpu`, Mosaic; `pallas_gpu`, Triton) call these functions in their time loops, so the
arithmetic is written once. Notation (as `pallas_kernels.selective_scan.reference`): N state size, E a block of
channels. The state is held as h [N, E] (state index on sublanes, channels on lanes: lane-dense for the usual
N = 16), per-channel values are rows [1, E] and per-state values (B_t, C_t) columns [N, 1]; everything is float32.

  delta = softplus(delta_raw + delta_bias)  (each optional; 0 at padded time steps)
  h_t = exp(delta_t A) h_{t-1} + (delta_t u_t) B_t ;  y_t = sum_n C_t[n] h_t[n] (+ D u_t, then * silu(z_t))
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["gate_backward", "process_delta", "sigmoid", "silu", "step_backward", "step_forward"]


def sigmoid(v):
  return 1.0 / (1.0 + jnp.exp(-v))


def silu(v):
  return v * sigmoid(v)


def _softplus(v):
  return jnp.maximum(v, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(v)))


def process_delta(delta_raw, bias, softplus: bool, valid):
  """(delta, d delta / d delta_raw) for rows (or any shape) of raw deltas; `bias` may be None; `valid` is a bool
  array (or None) that is False at padded time steps, whose delta is 0 so that they leave the state unchanged."""
  pre = delta_raw if bias is None else delta_raw + bias
  if softplus:
    delta, slope = _softplus(pre), sigmoid(pre)
  else:
    delta, slope = pre, jnp.ones_like(pre)
  if valid is not None:
    delta = jnp.where(valid, delta, 0.0)
    slope = jnp.where(valid, slope, 0.0)
  return delta, slope


def step_forward(h, u_row, delta_row, A, B_col, C_col):
  """One step: (h_t [N, E], y_t [1, E] before the D skip and the gate) from h_{t-1}."""
  h = jnp.exp(delta_row * A) * h + (delta_row * u_row) * B_col
  return h, jnp.sum(h * C_col, axis=0, keepdims=True)


def step_backward(h_prev, h, u_row, delta_row, A, B_col, C_col, dy_row, dh):
  """The vector-Jacobian product of one `step_forward` (through h_t and y_t).

  Args:
    h_prev, h: the states before and after the step [N, E]. u_row, delta_row: [1, E]. A: [N, E]. B_col, C_col:
      [N, 1]. dy_row: [1, E] cotangent of y_t (before the D skip). dh: [N, E] cotangent of h_t from later steps.

  Returns:
    (dh_prev [N, E], du [1, E] (through the state only), ddelta [1, E], dA contribution [N, E], dB [N, 1], dC [N, 1]).
  """
  g = dh + C_col * dy_row  # the total cotangent of h_t
  decay = jnp.exp(delta_row * A)
  g_decay_h_prev = g * decay * h_prev
  ddelta = jnp.sum(g_decay_h_prev * A + g * (u_row * B_col), axis=0, keepdims=True)
  du = delta_row * jnp.sum(g * B_col, axis=0, keepdims=True)
  dB = jnp.sum(g * (delta_row * u_row), axis=1, keepdims=True)
  dC = jnp.sum(h * dy_row, axis=1, keepdims=True)
  return decay * g, du, ddelta, g_decay_h_prev * delta_row, dB, dC


def gate_backward(dy, y_pre, z):
  """For y = y_pre * silu(z): (cotangent of y_pre, cotangent of z)."""
  sig = sigmoid(z)
  return dy * z * sig, dy * y_pre * sig * (1.0 + z * (1.0 - sig))
