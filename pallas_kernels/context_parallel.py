"""Sequence (context) parallelism for linear scans: exchanging the shards' states over a mesh axis.

A scan ``h_t = a_t * h_{t-1} + b_t`` over a sequence split into n contiguous shards (shard i holds positions
``[i T/n, (i+1) T/n)``, one shard per device of the context axis) runs on every shard from a zero state. Shard i then
knows

  S_i  its final state from zero (the state at its end if the state entering it were 0), and
  L_i  the log of its total decay, ``sum over the shard of log a_t`` (<= 0 for the SSMs' decays).

Linear recurrences compose: with H_i the true state entering shard i,

  H_0 = h_init (or 0),      H_{i+1} = exp(L_i) * H_i + S_i.

`incoming_states` runs inside `shard_map`: it all-gathers (S_j, L_j) over the context axis (n states per device: the
size of the states, not of the sequence), folds them with the recurrence above (n elementwise steps) and picks H_i for
its own shard. Each scan then corrects its outputs with H_i (`pallas_kernels.ssd.context_parallel`,
`pallas_kernels.selective_scan.context_parallel`). Autodiff goes through the exchange: the transpose of `all_gather`
is a reduce-scatter, so the cotangents of a later shard's outputs reach the S_j and L_j of the earlier ones.

`last_shard_value` turns a per-shard value into the last shard's value on every shard (the scan's final state).
"""

from __future__ import annotations


import jax.numpy as jnp
from jax import lax

__all__ = ["incoming_states", "last_shard_value"]

_F32 = jnp.float32


def incoming_states(local_final, log_decay, axis_name, initial_state=None):
  """The true state entering this shard, from every shard's zero-state final state and log decay (inside shard_map).

  Args:
    local_final: [...]: this shard's final state when it starts from zero (float32).
    log_decay: this shard's total log decay, broadcastable to `local_final` (same rank), <= 0.
    axis_name: the context mesh axis (or tuple of axes) the sequence is split over, in sequence order.
    initial_state: optional [...], the state before the first shard (replicated over the context axis).

  Returns:
    H_i [...] float32, the state entering this shard (the module docstring's recurrence).
  """
  states = lax.all_gather(local_final.astype(_F32), axis_name)  # [n, ...]
  log_decays = lax.all_gather(jnp.broadcast_to(log_decay.astype(_F32), log_decay.shape), axis_name)
  start = jnp.zeros_like(states[0]) if initial_state is None else initial_state.astype(_F32)
  start = start + jnp.zeros_like(states[0])  # broadcast to the gathered states' (varying) type

  def fold(entering, inputs):
    state, decay_log = inputs
    return jnp.exp(decay_log) * entering + state, entering  # emit the state entering shard j

  _, entering_all = lax.scan(fold, start, (states, log_decays))
  return lax.dynamic_index_in_dim(entering_all, lax.axis_index(axis_name), axis=0, keepdims=False)


def last_shard_value(value, axis_name):
  """The last shard's ``value`` on every shard of ``axis_name`` (a masked psum: replicated, differentiable)."""
  is_last = lax.axis_index(axis_name) == lax.axis_size(axis_name) - 1
  return lax.psum(jnp.where(is_last, value, jnp.zeros_like(value)), axis_name)
