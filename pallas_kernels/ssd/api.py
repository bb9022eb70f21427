"""The public Mamba-2 SSD entry point: argument validation and dispatch to an implementation.

Notation as in `pallas_kernels.ssd.reference`: b batch, t length, h heads, p head dim, g groups, n state size.

Implementations:
  "reference"  sequential `lax.scan` over time (`ssd_reference`); the oracle, slow.
  "chunked"    the four-step chunked algorithm in jnp (`ssd_chunked`); the default (`None`) on every backend.
"""

from __future__ import annotations

import functools

import jax

from pallas_kernels import common
from pallas_kernels.ssd import reference

__all__ = ["IMPLEMENTATIONS", "ssd"]

IMPLEMENTATIONS = ("reference", "chunked")
# Backend -> implementation used for `implementation=None`; "*" is every other backend. The Pallas kernels will
# take over "gpu" / "tpu" once they exist.
_DEFAULTS = {"*": "chunked"}


def ssd(
    x,
    dt,
    A,
    B,
    C,
    *,
    chunk_size: int,
    D=None,
    initial_state=None,
    return_final_state: bool = False,
    implementation: str | None = None,
):
  """Mamba-2 SSD scan (mamba_ssm chunk-scan convention).

  For every head h, with group g = h // (nheads // ngroups):

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t ⊗ B_t        S: [headdim, dstate], S_0 = initial_state or 0
    y_t = S_t · C_t + D * x_t

  Args:
    x: [batch, seqlen, nheads, headdim].
    dt: [batch, seqlen, nheads], already positive (softplus and dt_bias applied by the caller).
    A: [nheads], negative.
    B: [batch, seqlen, ngroups, dstate]; ngroups must divide nheads.
    C: [batch, seqlen, ngroups, dstate].
    chunk_size: chunk length Q, a positive int. Any seqlen is accepted (padded internally).
    D: optional [nheads] skip connection.
    initial_state: optional [batch, nheads, headdim, dstate].
    return_final_state: also return the state after the last step.
    implementation: None (best for the backend), "reference" or "chunked".

  Returns:
    y [batch, seqlen, nheads, headdim] in x's dtype, or `(y, final_state)` with final_state
    [batch, nheads, headdim, dstate] float32 when `return_final_state`.

  Raises:
    ValueError: a wrong rank or shape (naming the argument), chunk_size not a positive int, ngroups not dividing
      nheads, or an unknown implementation.
  """
  chunk_size = common.check_positive_int("chunk_size", chunk_size)
  _check_shapes(x, dt, A, B, C, D, initial_state)
  implementation = common.resolve_implementation(implementation, available=IMPLEMENTATIONS, defaults=_DEFAULTS)
  y, final_state = _ssd(
      x, dt, A, B, C, D, initial_state, chunk_size=chunk_size, implementation=implementation
  )
  return (y, final_state) if return_final_state else y


@functools.partial(jax.jit, static_argnames=("chunk_size", "implementation"))
def _ssd(x, dt, A, B, C, D, initial_state, *, chunk_size, implementation):
  if implementation == "reference":
    return reference.ssd_reference(x, dt, A, B, C, D=D, initial_state=initial_state)
  if implementation == "chunked":
    return reference.ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state)
  raise AssertionError(f"unhandled implementation {implementation!r}")  # resolve_implementation lets no other in


def _check_shapes(x, dt, A, B, C, D, initial_state) -> None:
  common.check_ndim("x", x, 4, "(batch, seqlen, nheads, headdim)")
  batch, seqlen, nheads, headdim = x.shape
  common.check_shape("dt", dt, (batch, seqlen, nheads), "(batch, seqlen, nheads)")
  common.check_shape("A", A, (nheads,), "(nheads,)")
  common.check_ndim("B", B, 4, "(batch, seqlen, ngroups, dstate)")
  ngroups, dstate = B.shape[2], B.shape[3]
  common.check_shape("B", B, (batch, seqlen, ngroups, dstate), "(batch, seqlen, ngroups, dstate)")
  if ngroups == 0 or nheads % ngroups != 0:
    raise ValueError(f"B and C: ngroups = {ngroups} (B.shape[2]) must divide nheads = {nheads} (x.shape[2])")
  common.check_shape("C", C, (batch, seqlen, ngroups, dstate), "(batch, seqlen, ngroups, dstate)")
  if D is not None:
    common.check_shape("D", D, (nheads,), "(nheads,)")
  if initial_state is not None:
    common.check_shape(
        "initial_state", initial_state, (batch, nheads, headdim, dstate), "(batch, nheads, headdim, dstate)"
    )
