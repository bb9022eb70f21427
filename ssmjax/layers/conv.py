"""Causal depthwise 1-D convolution over time, as the Mamba mixers use it.

Matches PyTorch's ``nn.Conv1d(C, C, K, groups=C, padding=K-1)`` with the first T outputs kept: output t sees inputs
t-K+1 .. t, and ``kernel[K-1]`` multiplies the newest one. Channels may have any shape (``(E,)`` for Mamba-1,
``(G, channels per group)`` for Mamba-2's group-major layout).

Decoding carries a *conv state* (B, *channels, K): the last K inputs, oldest first, channels first (mamba_ssm's and
HF's layout; zeros before the first token, which is the full path's left padding). `causal_conv1d_with_state`
continues a sequence from such a state, for any number of new steps (prefill, or one token).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax import context_parallel
from ssmjax.layers.params import param, torch_default_uniform


def causal_conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """x (B, T, *channels), kernel (K, *channels), bias (*channels) -> (B, T, *channels)."""
  width = kernel.shape[0]
  padded = jnp.pad(x, [(0, 0), (width - 1, 0)] + [(0, 0)] * (x.ndim - 2))
  length = x.shape[1]
  y = sum(padded[:, k:k + length] * kernel[k] for k in range(width))
  return y if bias is None else y + bias


def causal_conv1d_reference(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """The same convolution, one output position at a time (the slow oracle for tests)."""
  width = kernel.shape[0]
  outputs = []
  for t in range(x.shape[1]):
    acc = jnp.zeros_like(x[:, 0])
    for k in range(width):
      source = t - (width - 1) + k
      if source >= 0:
        acc = acc + x[:, source] * kernel[k]
    outputs.append(acc if bias is None else acc + bias)
  return jnp.stack(outputs, axis=1)


def causal_conv1d_with_state(x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
                             state: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x (B, T, *channels) following the inputs held in ``state`` (B, *channels, K) -> (y, the new state).

  Equal to `causal_conv1d` over the concatenation of the state's inputs and x, keeping the last T outputs.
  """
  width, length = kernel.shape[0], x.shape[1]
  if state.shape != (x.shape[0], *x.shape[2:], width):
    raise ValueError(f"state must have shape (batch, *channels, K) = {(x.shape[0], *x.shape[2:], width)}, "
                     f"got {state.shape}")
  window = jnp.concatenate([jnp.moveaxis(state, -1, 1).astype(x.dtype), x], axis=1)  # (B, K + T, *channels)
  # Output t (new input t sits at K + t) reads window[t + 1 .. t + K]; kernel[K-1] multiplies the newest.
  y = sum(window[:, 1 + k:1 + k + length] * kernel[k] for k in range(width))
  new_state = jnp.moveaxis(window[:, -width:], 1, -1).astype(state.dtype)
  return (y if bias is None else y + bias), new_state


class CausalConv1d(nn.Module):
  """Depthwise causal conv with parameters ``kernel`` (K, *channels) and optional ``bias`` (*channels)."""

  width: int
  channel_axes: Sequence[str | None]
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, state: jax.Array | None = None) -> jax.Array | tuple[jax.Array, jax.Array]:
    """y for a whole sequence, or ``(y, new_state)`` when continuing from a conv ``state`` (B, *channels, K)."""
    channels = x.shape[2:]
    if len(channels) != len(self.channel_axes):
      raise ValueError(f"x has channel shape {channels} but channel_axes is {tuple(self.channel_axes)}")
    # PyTorch's default for a depthwise conv: fan_in = K (one input channel per group).
    init = torch_default_uniform(self.width)
    kernel = param(self, "kernel", init, (self.width, *channels), ("conv_kernel", *self.channel_axes),
                   self.param_dtype)
    bias = param(self, "bias", init, channels, tuple(self.channel_axes), self.param_dtype) if self.use_bias else None
    kernel, bias = kernel.astype(self.dtype), None if bias is None else bias.astype(self.dtype)
    if state is None:
      layout = context_parallel.context_layout(x.shape[1])  # the sequence split over devices: exchange the halos
      if layout is not None:
        return context_parallel.causal_conv1d(x.astype(self.dtype), kernel, bias, layout, self.channel_axes)
      return causal_conv1d(x.astype(self.dtype), kernel, bias)
    return causal_conv1d_with_state(x.astype(self.dtype), kernel, bias, state)
