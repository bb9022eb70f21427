"""The public Mamba-2 SSD entry point: argument validation and dispatch to an implementation.

Notation as in `pallas_kernels.ssd.reference`: b batch, t length, h heads, p head dim, g groups, n state size.

Implementations:
  "reference"             sequential `lax.scan` over time (`ssd_reference`); the oracle, slow.
  "chunked"               the four-step chunked algorithm in jnp (`ssd_chunked`); the default (`None`) on CPU.
  "pallas"                the Pallas kernel of the current backend (`pallas_tpu` on TPU, `pallas_gpu` on GPU); the
                          default on TPU and GPU. A ValueError on other backends.
  "pallas_tpu"            the Mosaic TPU kernels (`pallas_kernels.ssd.pallas_tpu`), whatever the current backend:
                          what ahead-of-time compilation for a TPU topology from a CPU host uses.
  "pallas_gpu"            the Triton GPU kernels (`pallas_kernels.ssd.pallas_gpu`).
  "pallas_tpu_interpret"  the TPU kernels in Pallas' TPU interpret mode (any backend; slow, for tests).
  "pallas_gpu_interpret"  the GPU kernels in Pallas' interpret mode (any backend; slow, for tests).

The optional dt processing (`dt_bias`, `dt_softplus`, `dt_limit`) and output gate (`z`) are what mamba_ssm's
`mamba_chunk_scan_combined` fuses. The jnp implementations apply them around the scan (the reference composition);
the Pallas path applies dt processing in the jnp prologue that XLA fuses with the dt * A cumsum feeding the kernels,
and the D skip and the z gate inside the forward kernel.
"""

from __future__ import annotations

import functools
import math

import jax

from pallas_kernels import common
from pallas_kernels.ssd import reference
from pallas_kernels.ssd.block_sizes import SsdGpuBlockSizes, SsdTpuBlockSizes
from pallas_kernels.ssd.pallas import ssd_pallas

__all__ = ["IMPLEMENTATIONS", "ssd"]

IMPLEMENTATIONS = ("reference", "chunked", *common.PALLAS_IMPLEMENTATIONS)
# Backend -> implementation used for `implementation=None`; "*" is every other backend.
_DEFAULTS = {"tpu": "pallas", "gpu": "pallas", "*": "chunked"}


def ssd(
    x,
    dt,
    A,
    B,
    C,
    *,
    chunk_size: int,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] | None = None,
    initial_state=None,
    return_final_state: bool = False,
    implementation: str | None = None,
    block_sizes: SsdTpuBlockSizes | SsdGpuBlockSizes | None = None,
):
  """Mamba-2 SSD scan (mamba_ssm chunk-scan convention).

  For every head h, with group g = h // (nheads // ngroups):

    dt = clip(softplus(dt + dt_bias), *dt_limit)             each step optional (see the arguments)
    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t ⊗ B_t        S: [headdim, dstate], S_0 = initial_state or 0
    y_t = S_t · C_t + D * x_t;  y = y * silu(z) if z is given

  Args:
    x: [batch, seqlen, nheads, headdim].
    dt: [batch, seqlen, nheads]: positive step sizes, or raw ones that `dt_bias` / `dt_softplus` turn positive.
    A: [nheads], negative.
    B: [batch, seqlen, ngroups, dstate]; ngroups must divide nheads.
    C: [batch, seqlen, ngroups, dstate].
    chunk_size: chunk length Q, a positive int. Any seqlen is accepted (padded internally).
    D: optional [nheads] skip connection.
    z: optional [batch, seqlen, nheads, headdim] output gate.
    dt_bias: optional [nheads], added to dt (in float32) first.
    dt_softplus: apply softplus to dt (after dt_bias).
    dt_limit: optional (low, high): clamp dt to [low, high] last; None or (0, inf) is no clamp.
    initial_state: optional [batch, nheads, headdim, dstate].
    return_final_state: also return the state after the last step.
    implementation: None (best for the backend) or one of `IMPLEMENTATIONS` (see the module docstring).
    block_sizes: `SsdTpuBlockSizes` / `SsdGpuBlockSizes` for the Pallas implementations (None: defaults); the jnp
      implementations ignore it.

  Returns:
    y [batch, seqlen, nheads, headdim] in x's dtype, or `(y, final_state)` with final_state
    [batch, nheads, headdim, dstate] float32 when `return_final_state`.

  Raises:
    ValueError: a wrong rank or shape (naming the argument), chunk_size not a positive int, ngroups not dividing
      nheads, a bad dt_limit, block sizes that do not fit the kernel or the shapes, an unknown implementation, or
      "pallas" on a backend without Pallas kernels (CPU).
  """
  chunk_size = common.check_positive_int("chunk_size", chunk_size)
  _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_state)
  dt_limit = _check_dt_limit(dt_limit)
  implementation = common.resolve_implementation(implementation, available=IMPLEMENTATIONS, defaults=_DEFAULTS)
  if block_sizes is not None and not isinstance(block_sizes, (SsdTpuBlockSizes, SsdGpuBlockSizes)):
    raise ValueError(f"block_sizes must be None, SsdTpuBlockSizes or SsdGpuBlockSizes, got {block_sizes!r}")
  y, final_state = _ssd(
      x, dt, A, B, C, D, z, dt_bias, initial_state, chunk_size=chunk_size, dt_softplus=bool(dt_softplus),
      dt_limit=dt_limit, implementation=implementation, block_sizes=block_sizes,
  )
  return (y, final_state) if return_final_state else y


@functools.partial(
    jax.jit, static_argnames=("chunk_size", "dt_softplus", "dt_limit", "implementation", "block_sizes")
)
def _ssd(x, dt, A, B, C, D, z, dt_bias, initial_state, *, chunk_size, dt_softplus, dt_limit, implementation,
         block_sizes):
  dt = reference.process_dt(dt, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
  target = common.pallas_target(implementation)
  if target is not None:
    return ssd_pallas(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, initial_state=initial_state, target=target,
                      block_sizes=block_sizes)
  if implementation == "reference":
    y, final_state = reference.ssd_reference(x, dt, A, B, C, D=D, initial_state=initial_state)
  elif implementation == "chunked":
    y, final_state = reference.ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state)
  else:  # resolve_implementation lets no other name in
    raise AssertionError(f"unhandled implementation {implementation!r}")
  return reference.gate(y, z), final_state


def _check_dt_limit(dt_limit) -> tuple[float, float] | None:
  """None for "no clamp" (None or (0, inf)), else (low, high) as floats; raises ValueError for anything else."""
  if dt_limit is None:
    return None
  try:
    low, high = (float(v) for v in dt_limit)
  except (TypeError, ValueError):
    raise ValueError(f"dt_limit must be None or a pair (low, high) of numbers, got {dt_limit!r}") from None
  if math.isnan(low) or math.isnan(high) or low > high:
    raise ValueError(f"dt_limit must be a pair (low, high) with low <= high, got {dt_limit!r}")
  if low <= 0.0 and high == math.inf:  # dt is positive when this matters, so (<= 0, inf) does nothing
    return None
  return low, high


def _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_state) -> None:
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
  if z is not None:
    common.check_shape("z", z, (batch, seqlen, nheads, headdim), "(batch, seqlen, nheads, headdim)")
  if dt_bias is not None:
    common.check_shape("dt_bias", dt_bias, (nheads,), "(nheads,)")
  if initial_state is not None:
    common.check_shape(
        "initial_state", initial_state, (batch, nheads, headdim, dstate), "(batch, nheads, headdim, dstate)"
    )
