"""The public Mamba-1 selective-scan entry point: argument validation and dispatch to an implementation.

Notation as in `pallas_kernels.selective_scan.reference`: b batch, t length, e channels (d_inner), n state size.

Implementations:
  "reference"             sequential `lax.scan` over time (`selective_scan_reference`); the oracle.
  "associative"           `lax.associative_scan` over time (`selective_scan_associative`); the default (`None`) on
                          CPU.
  "pallas"                the Pallas kernel of the current backend (`pallas_tpu` on TPU, `pallas_gpu` on GPU); the
                          default on TPU and GPU. A ValueError on other backends.
  "pallas_tpu"            the Mosaic TPU kernels (`pallas_kernels.selective_scan.pallas_tpu`), whatever the current
                          backend (ahead-of-time compilation for a TPU from a CPU host).
  "pallas_gpu"            the Triton GPU kernels (`pallas_kernels.selective_scan.pallas_gpu`).
  "pallas_tpu_interpret"  the TPU kernels in Pallas' TPU interpret mode (any backend; slow, for tests).
  "pallas_gpu_interpret"  the GPU kernels in Pallas' interpret mode (any backend; slow, for tests).

The kernels carry the state on chip across sequence blocks and fuse delta_bias + softplus, the D skip and the z gate.
"""

from __future__ import annotations

import functools

import jax

from pallas_kernels import common
from pallas_kernels.selective_scan import reference
from pallas_kernels.selective_scan.block_sizes import ScanGpuBlockSizes, ScanTpuBlockSizes
from pallas_kernels.selective_scan.pallas import selective_scan_pallas

__all__ = ["IMPLEMENTATIONS", "selective_scan"]

IMPLEMENTATIONS = ("reference", "associative", *common.PALLAS_IMPLEMENTATIONS)
# Backend -> implementation used for `implementation=None`; "*" is every other backend.
_DEFAULTS = {"tpu": "pallas", "gpu": "pallas", "*": "associative"}


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    *,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus: bool = False,
    initial_state=None,
    return_final_state: bool = False,
    implementation: str | None = None,
    block_sizes: ScanTpuBlockSizes | ScanGpuBlockSizes | None = None,
):
  """Mamba-1 selective scan (mamba_ssm `selective_scan_fn` with B and C shared by all channels).

    delta = delta + delta_bias (if given), then softplus(delta) if delta_softplus
    h_t = exp(delta_t * A) * h_{t-1} + (delta_t * u_t) * B_t        h: [d_inner, dstate], h_0 = initial_state or 0
    y_t = h_t · C_t + D * u_t;  y = y * silu(z) if z is given

  Args:
    u: [batch, seqlen, d_inner], seqlen >= 1.
    delta: [batch, seqlen, d_inner].
    A: [d_inner, dstate], negative.
    B, C: [batch, seqlen, dstate].
    D: optional [d_inner] skip connection.
    z: optional [batch, seqlen, d_inner] gate.
    delta_bias: optional [d_inner].
    delta_softplus: apply softplus to delta after adding delta_bias.
    initial_state: optional [batch, d_inner, dstate].
    return_final_state: also return the state after the last step.
    implementation: None (best for the backend) or one of `IMPLEMENTATIONS` (see the module docstring).
    block_sizes: `ScanTpuBlockSizes` / `ScanGpuBlockSizes` for the Pallas implementations (None: defaults); the jnp
      implementations ignore it.

  Returns:
    y [batch, seqlen, d_inner] in u's dtype, or `(y, final_state)` with final_state [batch, d_inner, dstate]
    float32 when `return_final_state`. Computed in float32.

  Raises:
    ValueError: a wrong rank or shape (naming the argument), block sizes that do not fit the kernel, an unknown
      implementation, or "pallas" on a backend without Pallas kernels (CPU).
  """
  _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
  implementation = common.resolve_implementation(implementation, available=IMPLEMENTATIONS, defaults=_DEFAULTS)
  if block_sizes is not None and not isinstance(block_sizes, (ScanTpuBlockSizes, ScanGpuBlockSizes)):
    raise ValueError(f"block_sizes must be None, ScanTpuBlockSizes or ScanGpuBlockSizes, got {block_sizes!r}")
  y, final_state = _selective_scan(
      u,
      delta,
      A,
      B,
      C,
      D,
      z,
      delta_bias,
      initial_state,
      delta_softplus=bool(delta_softplus),
      implementation=implementation,
      block_sizes=block_sizes,
  )
  return (y, final_state) if return_final_state else y


@functools.partial(jax.jit, static_argnames=("delta_softplus", "implementation", "block_sizes"))
def _selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, *, delta_softplus, implementation,
                    block_sizes):
  target = common.pallas_target(implementation)
  if target is not None:
    return selective_scan_pallas(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                 initial_state=initial_state, target=target, block_sizes=block_sizes)
  if implementation == "reference":
    fn = reference.selective_scan_reference
  elif implementation == "associative":
    fn = reference.selective_scan_associative
  else:  # resolve_implementation lets no other name in
    raise AssertionError(f"unhandled implementation {implementation!r}")
  return fn(
      u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, initial_state=initial_state
  )


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
  common.check_ndim("u", u, 3, "(batch, seqlen, d_inner)")
  batch, seqlen, d_inner = u.shape
  if seqlen == 0:
    raise ValueError(f"u must have seqlen >= 1, got shape {tuple(u.shape)}")
  common.check_shape("delta", delta, (batch, seqlen, d_inner), "(batch, seqlen, d_inner)")
  common.check_ndim("A", A, 2, "(d_inner, dstate)")
  dstate = A.shape[1]
  common.check_shape("A", A, (d_inner, dstate), "(d_inner, dstate)")
  common.check_shape("B", B, (batch, seqlen, dstate), "(batch, seqlen, dstate)")
  common.check_shape("C", C, (batch, seqlen, dstate), "(batch, seqlen, dstate)")
  if D is not None:
    common.check_shape("D", D, (d_inner,), "(d_inner,)")
  if z is not None:
    common.check_shape("z", z, (batch, seqlen, d_inner), "(batch, seqlen, d_inner)")
  if delta_bias is not None:
    common.check_shape("delta_bias", delta_bias, (d_inner,), "(d_inner,)")
  if initial_state is not None:
    common.check_shape("initial_state", initial_state, (batch, d_inner, dstate), "(batch, d_inner, dstate)")
