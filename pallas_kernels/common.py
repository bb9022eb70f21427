"""Small helpers shared by the ops in `pallas_kernels`.

- `pad_axis_to_multiple`: zero-pad one axis (the time axis T) up to a multiple of a block length (the chunk length Q).
- `check_positive_int`, `check_ndim`, `check_shape`: argument validation that raises `ValueError` naming the
  argument and the expected shape, so that a wrong call fails at trace time with a message a user can act on.
- `resolve_implementation`: turns the public `implementation=` argument into a concrete name, with `None` meaning
  "the best one for the current backend".
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "check_ndim",
    "check_positive_int",
    "check_shape",
    "pad_axis_to_multiple",
    "resolve_implementation",
]


def pad_axis_to_multiple(x: jax.Array, multiple: int, axis: int) -> jax.Array:
  """Zero-pads `x` at the end of `axis` so that its length is a multiple of `multiple`."""
  length = x.shape[axis]
  pad = -length % multiple
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def check_positive_int(name: str, value) -> int:
  """Returns `value` as an int, or raises ValueError unless it is a positive integer (bools are rejected)."""
  if isinstance(value, bool):
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  try:
    as_int = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be a positive int, got {value!r}") from None
  if as_int <= 0:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return as_int


def check_ndim(name: str, x, ndim: int, dims: str) -> None:
  """Raises ValueError unless `x` has rank `ndim`; `dims` names the axes, e.g. "(batch, seqlen, nheads)"."""
  shape = jnp.shape(x)
  if len(shape) != ndim:
    raise ValueError(f"{name} must have rank {ndim} with shape {dims}, got shape {tuple(shape)}")


def check_shape(name: str, x, expected: Sequence[int], dims: str) -> None:
  """Raises ValueError unless `x.shape == expected`; `dims` names the axes, e.g. "(batch, seqlen, nheads)"."""
  shape = tuple(jnp.shape(x))
  if shape != tuple(expected):
    raise ValueError(f"{name} must have shape {dims} = {tuple(expected)}, got shape {shape}")


def resolve_implementation(
    implementation: str | None,
    *,
    available: Sequence[str],
    defaults: Mapping[str, str],
    backend: str | None = None,
) -> str:
  """Returns the implementation to run.

  Args:
    implementation: the user's choice, or None for the default of the backend.
    available: the names this op knows.
    defaults: backend name ("cpu", "gpu", "tpu", ...) -> implementation; the key "*" is the fallback.
    backend: the backend to pick a default for; `jax.default_backend()` when None.

  Raises:
    ValueError: `implementation` is not None and not one of `available`.
  """
  if implementation is None:
    backend = jax.default_backend() if backend is None else backend
    return defaults.get(backend, defaults["*"])
  if not isinstance(implementation, str) or implementation not in available:
    raise ValueError(f"implementation must be None or one of {tuple(available)}, got {implementation!r}")
  return implementation
