"""Tests for `pallas_kernels.selective_scan` (Mamba-1).

Every implementation is held to the sequential "reference" implementation (forward and gradients) and to a float64
NumPy recurrence written here with plain loops, independent of the library. A new implementation gets the whole
matrix by subclassing `SelectiveScanImplementationTests` with its name in `IMPLEMENTATION`: the Pallas kernels run
it in interpret mode ("pallas_gpu_interpret", "pallas_tpu_interpret").

Tolerances:
  float32 forward: max abs error <= 1e-5 (outputs and final states).
  float32 gradients: max abs error <= 1e-4 * max |reference gradient|, for every input.
  bfloat16 inputs (u, delta, B, C, z): computation is float32 and only the output is rounded to bfloat16 (relative
    rounding error <= 2^-9), so y must be within 1e-2 * max |y| of the float64 recurrence run on the same
    (bf16-rounded) inputs, about 2.5 bf16 ulps at the largest output; the float32 final state within
    1e-4 * max |state|.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import common
from pallas_kernels.selective_scan import IMPLEMENTATIONS as SELECTIVE_SCAN_IMPLEMENTATIONS
from pallas_kernels.selective_scan import api as selective_scan_api
from pallas_kernels.selective_scan.block_sizes import ScanGpuBlockSizes, ScanTpuBlockSizes

BATCH = 2
D_INNER = 6
FORWARD_ATOL = 1e-5
GRAD_RTOL = 1e-4
BF16_RTOL = 1e-2
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@dataclasses.dataclass(frozen=True)
class Case:
  seqlen: int
  gated: bool  # D, z and delta_bias given and delta_softplus=True (as in a Mamba-1 layer), else none of them.
  initial_state: bool
  dstate: int

  def __str__(self) -> str:
    options = "full" if self.gated else "plain"
    init = "init" if self.initial_state else "noinit"
    return f"T{self.seqlen}-{options}-{init}-N{self.dstate}"


_DSTATE = {1: 5, 5: 5, 16: 8, 37: 6}  # seqlen -> dstate
# Lengths below, at and above a power of two (the associative scan splits odd and even positions), and 1.
ALL_CASES = [Case(t, gated, init, _DSTATE[t]) for t in (5, 16, 37) for gated in (False, True) for init in (False, True)]
ALL_CASES.append(Case(1, True, True, _DSTATE[1]))
# Compilation dominates the run time, so the default run covers the matrix and `-m slow` runs all of it. Forward:
# each length with options and initial state both on and off.
FORWARD_CASES = [
    Case(1, True, True, _DSTATE[1]),
    Case(5, False, False, _DSTATE[5]),
    Case(5, True, True, _DSTATE[5]),
    Case(16, False, True, _DSTATE[16]),
    Case(16, True, False, _DSTATE[16]),
    Case(37, False, False, _DSTATE[37]),
    Case(37, True, True, _DSTATE[37]),
]
# Gradients (two backward passes to compile per case; the associative scan's is slow to compile).
GRAD_CASES = [
    Case(5, True, False, _DSTATE[5]),
    Case(16, False, True, _DSTATE[16]),
    Case(37, True, True, _DSTATE[37]),
]
BF16_CASES = [Case(16, False, False, _DSTATE[16]), Case(37, True, True, _DSTATE[37])]
# The TPU kernel in TPU interpret mode costs about twice the GPU kernel in interpret mode (it simulates TPU memory
# and DMAs), so by default it runs a subset that still covers every length and option setting (`-m slow`: the rest).
TPU_INTERPRET_FORWARD_CASES = [
    Case(1, True, True, _DSTATE[1]),
    Case(16, False, True, _DSTATE[16]),
    Case(37, True, True, _DSTATE[37]),
]
TPU_INTERPRET_GRAD_CASES = [Case(16, False, True, _DSTATE[16]), Case(37, True, True, _DSTATE[37])]


def matrix(default_cases):
  """All cases as pytest params; those not in `default_cases` are marked slow."""
  return [pytest.param(c, id=str(c), marks=() if c in default_cases else pytest.mark.slow) for c in ALL_CASES]


def make_inputs(case: Case, seed: int = 0) -> dict:
  """Random float32 inputs in the ranges a Mamba-1 layer sees; returns a dict of arrays and `delta_softplus`."""
  rng = np.random.default_rng(seed)
  b, t, e, n = BATCH, case.seqlen, D_INNER, case.dstate
  inputs = {
      "u": rng.normal(size=(b, t, e)),
      # Raw pre-softplus values when gated, else already-positive step sizes.
      "delta": rng.normal(-1.0, 1.0, size=(b, t, e)) if case.gated else rng.uniform(0.05, 0.6, size=(b, t, e)),
      "A": -rng.uniform(0.5, 3.0, size=(e, n)),
      "B": rng.normal(size=(b, t, n)),
      "C": rng.normal(size=(b, t, n)),
      "D": rng.normal(size=(e,)) if case.gated else None,
      "z": rng.normal(size=(b, t, e)) if case.gated else None,
      "delta_bias": rng.uniform(-0.5, 0.5, size=(e,)) if case.gated else None,
      "initial_state": rng.normal(size=(b, e, n)) if case.initial_state else None,
  }
  inputs = {k: None if v is None else v.astype(np.float32) for k, v in inputs.items()}
  return {**inputs, "delta_softplus": case.gated}


def selective_scan_numpy(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
  """The recurrence in float64 with plain loops: h = exp(delta A) h + delta u B; y = (h·C + D u) silu(z)."""
  u, delta, A, B, C = (np.asarray(a, np.float64) for a in (u, delta, A, B, C))
  if delta_bias is not None:
    delta = delta + np.asarray(delta_bias, np.float64)
  if delta_softplus:
    delta = np.logaddexp(0.0, delta)
  batch, seqlen, d_inner = u.shape
  state = np.zeros((batch, d_inner, A.shape[1]))
  if initial_state is not None:
    state[...] = np.asarray(initial_state, np.float64)
  y = np.zeros(u.shape)
  for b in range(batch):
    for t in range(seqlen):
      for e in range(d_inner):
        state[b, e] = np.exp(delta[b, t, e] * A[e]) * state[b, e] + delta[b, t, e] * u[b, t, e] * B[b, t]
        y[b, t, e] = state[b, e] @ C[b, t]
        if D is not None:
          y[b, t, e] += float(D[e]) * u[b, t, e]
        if z is not None:
          gate = float(z[b, t, e])
          y[b, t, e] *= gate / (1.0 + np.exp(-gate))
  return y, state


def _call_selective_scan(arrays, delta_softplus, implementation, block_sizes=None):
  args = {k: arrays.get(k) for k in ARG_NAMES}
  positional = [args.pop(k) for k in ("u", "delta", "A", "B", "C")]
  return pallas_kernels.selective_scan(*positional, **args, delta_softplus=delta_softplus, return_final_state=True,
                                       implementation=implementation, block_sizes=block_sizes)


# Interpret-mode kernels become large XLA programs whose compilation dominates these tests (they run on tiny
# inputs); compiling them without LLVM's backend optimisations roughly halves that time.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
_STATIC = ("delta_softplus", "implementation", "block_sizes")
_jit_forward = {
    fast: jax.jit(_call_selective_scan, static_argnames=_STATIC, compiler_options=_FAST_COMPILE if fast else None)
    for fast in (False, True)
}


def _is_interpret(implementation) -> bool:
  return implementation is not None and implementation.endswith("_interpret")


def run_selective_scan(inputs, implementation, block_sizes=None):
  """Returns (y, final_state) of `pallas_kernels.selective_scan` on a dict like `make_inputs`'s (missing keys: None)."""
  arrays = {k: jnp.asarray(v) for k, v in inputs.items() if k != "delta_softplus" and v is not None}
  return _jit_forward[_is_interpret(implementation)](
      arrays, delta_softplus=inputs["delta_softplus"], implementation=implementation, block_sizes=block_sizes
  )


def selective_scan_gradients(inputs, implementation, seed=1, block_sizes=None):
  """Gradients of <y, gy> + <final_state, gs> (random cotangents) w.r.t. every given input, as a dict."""
  b, _, e = inputs["u"].shape
  rng = np.random.default_rng(seed)
  gy = rng.normal(size=inputs["u"].shape).astype(np.float32)
  gs = rng.normal(size=(b, e, inputs["A"].shape[1])).astype(np.float32)
  arrays = {k: v for k, v in inputs.items() if k != "delta_softplus" and v is not None}
  return _jit_gradients[_is_interpret(implementation)](
      arrays, gy, gs, delta_softplus=inputs["delta_softplus"], implementation=implementation, block_sizes=block_sizes
  )


def _gradients(arrays, gy, gs, *, delta_softplus, implementation, block_sizes):
  def loss(arrays):
    y, final_state = _call_selective_scan(arrays, delta_softplus, implementation, block_sizes)
    return jnp.sum(y * gy) + jnp.sum(final_state * gs)

  return jax.grad(loss)(arrays)


# Module level and jitted, so that tests with the same shapes share one compilation.
_jit_gradients = {
    fast: jax.jit(_gradients, static_argnames=_STATIC,
                  compiler_options=_FAST_COMPILE if fast else None)
    for fast in (False, True)
}


def numpy_inputs(inputs) -> dict:
  return {k: v if v is None or isinstance(v, bool) else np.asarray(v, np.float64) for k, v in inputs.items()}


def max_abs(a) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64))))


def max_abs_diff(a, b) -> float:
  return max_abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))


class SelectiveScanImplementationTests:
  """The test matrix every non-reference implementation runs; subclasses set IMPLEMENTATION (and BLOCK_SIZES)."""

  IMPLEMENTATION: str
  BLOCK_SIZES = None  # the kernels' block sizes for the whole matrix

  @pytest.mark.parametrize("case", matrix(FORWARD_CASES))
  def test_forward_matches_reference(self, case):
    inputs = make_inputs(case)
    y, final_state = run_selective_scan(inputs, self.IMPLEMENTATION, self.BLOCK_SIZES)
    y_ref, final_ref = run_selective_scan(inputs, "reference")
    assert y.shape == inputs["u"].shape and y.dtype == jnp.float32
    assert final_state.shape == final_ref.shape and final_state.dtype == jnp.float32
    assert max_abs_diff(y, y_ref) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final_ref) <= FORWARD_ATOL

  @pytest.mark.parametrize("case", matrix(FORWARD_CASES))
  def test_forward_matches_numpy_float64(self, case):
    inputs = make_inputs(case)
    y, final_state = run_selective_scan(inputs, self.IMPLEMENTATION, self.BLOCK_SIZES)
    y64, final64 = selective_scan_numpy(**inputs)
    assert max_abs_diff(y, y64) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final64) <= FORWARD_ATOL

  @pytest.mark.parametrize("case", matrix(GRAD_CASES))
  def test_gradients_match_reference(self, case):
    inputs = make_inputs(case)
    grads = selective_scan_gradients(inputs, self.IMPLEMENTATION, block_sizes=self.BLOCK_SIZES)
    grads_ref = selective_scan_gradients(inputs, "reference")
    assert grads.keys() == grads_ref.keys()
    for name, grad_ref in grads_ref.items():
      assert grads[name].shape == grad_ref.shape, name
      error = max_abs_diff(grads[name], grad_ref)
      assert error <= GRAD_RTOL * max_abs(grad_ref), f"d/d{name}: max abs error {error}"

  @pytest.mark.parametrize("case", BF16_CASES, ids=str)
  def test_bfloat16_matches_numpy_float64(self, case):
    # Given bf16 activations (A, D, delta_bias and the state stay float32, as in a Mamba-1 layer) ...
    inputs = make_inputs(case)
    for name in ("u", "delta", "B", "C", "z"):
      if inputs[name] is not None:
        inputs[name] = np.asarray(jnp.asarray(inputs[name], jnp.bfloat16))
    # ... when the implementation runs on them ...
    y, final_state = run_selective_scan(inputs, self.IMPLEMENTATION, self.BLOCK_SIZES)
    # ... then y is bf16 and within output rounding of the float64 recurrence on the same rounded inputs.
    y64, final64 = selective_scan_numpy(**numpy_inputs(inputs))
    assert y.dtype == jnp.bfloat16 and final_state.dtype == jnp.float32
    assert max_abs_diff(y, y64) <= BF16_RTOL * max_abs(y64)
    assert max_abs_diff(final_state, final64) <= 1e-4 * max_abs(final64)

  def test_gradients_finite_under_strong_decay(self):
    # delta * A down to -128 per step: decays underflow to 0 and must not produce NaN gradients.
    inputs = make_inputs(Case(16, False, True, _DSTATE[16]))  # the shapes of a GRAD_CASES entry: no recompilation
    rng = np.random.default_rng(3)
    inputs["delta"] = rng.uniform(2.0, 8.0, size=inputs["delta"].shape).astype(np.float32)
    inputs["A"] = -rng.uniform(8.0, 16.0, size=inputs["A"].shape).astype(np.float32)
    y, final_state = run_selective_scan(inputs, self.IMPLEMENTATION, self.BLOCK_SIZES)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(final_state))
    for name, grad in selective_scan_gradients(inputs, self.IMPLEMENTATION, block_sizes=self.BLOCK_SIZES).items():
      assert np.all(np.isfinite(grad)), name

  def test_optional_arguments_default(self):
    # D=None is D=0, z=None is no gate, delta_bias=None is 0, initial_state=None is a zero state, and the output
    # alone is returned by default.
    inputs = make_inputs(Case(16, False, True, _DSTATE[16]))
    u, delta, A, B, C = (jnp.asarray(inputs[k]) for k in ("u", "delta", "A", "B", "C"))
    y = pallas_kernels.selective_scan(u, delta, A, B, C, implementation=self.IMPLEMENTATION,
                                      block_sizes=self.BLOCK_SIZES)
    y_explicit = pallas_kernels.selective_scan(
        u,
        delta,
        A,
        B,
        C,
        D=jnp.zeros(D_INNER),
        delta_bias=jnp.zeros(D_INNER),
        initial_state=jnp.zeros(inputs["initial_state"].shape),
        implementation=self.IMPLEMENTATION,
        block_sizes=self.BLOCK_SIZES,
    )
    assert isinstance(y, jax.Array)
    np.testing.assert_allclose(y, y_explicit, rtol=0, atol=1e-6)


class TestSelectiveScanAssociative(SelectiveScanImplementationTests):
  IMPLEMENTATION = "associative"


class TestSelectiveScanPallasGpuInterpret(SelectiveScanImplementationTests):
  """The Triton kernels in Pallas' interpret mode, the whole matrix, with blocks small enough that d_inner = 6 is
  padded to two channel blocks and T = 37 spans five time blocks."""

  IMPLEMENTATION = "pallas_gpu_interpret"
  BLOCK_SIZES = ScanGpuBlockSizes(block_channels=4, block_time=8)

  def test_default_block_sizes(self):
    inputs = make_inputs(Case(37, True, True, _DSTATE[37]))
    y, final_state = run_selective_scan(inputs, self.IMPLEMENTATION)
    y_ref, final_ref = run_selective_scan(inputs, "reference")
    assert max_abs_diff(y, y_ref) <= FORWARD_ATOL and max_abs_diff(final_state, final_ref) <= FORWARD_ATOL


class TestSelectiveScanPallasTpuInterpret(SelectiveScanImplementationTests):
  """The Mosaic kernels in TPU interpret mode with 8-step time blocks (T = 37 spans five), a subset of the matrix
  by default (see TPU_INTERPRET_*_CASES)."""

  IMPLEMENTATION = "pallas_tpu_interpret"
  BLOCK_SIZES = ScanTpuBlockSizes(block_time=8)

  @pytest.mark.parametrize("case", matrix(TPU_INTERPRET_FORWARD_CASES))
  def test_forward_matches_reference(self, case):
    super().test_forward_matches_reference(case)

  @pytest.mark.parametrize("case", matrix(TPU_INTERPRET_FORWARD_CASES))
  def test_forward_matches_numpy_float64(self, case):
    super().test_forward_matches_numpy_float64(case)

  @pytest.mark.parametrize("case", matrix(TPU_INTERPRET_GRAD_CASES))
  def test_gradients_match_reference(self, case):
    super().test_gradients_match_reference(case)

  @pytest.mark.parametrize("case", [pytest.param(c, id=str(c), marks=() if i == 1 else pytest.mark.slow)
                                    for i, c in enumerate(BF16_CASES)])
  def test_bfloat16_matches_numpy_float64(self, case):
    super().test_bfloat16_matches_numpy_float64(case)

  @pytest.mark.slow
  def test_optional_arguments_default(self):
    super().test_optional_arguments_default()

  @pytest.mark.slow
  def test_gradients_finite_under_strong_decay(self):
    super().test_gradients_finite_under_strong_decay()

  @pytest.mark.slow
  def test_default_block_sizes(self):
    inputs = make_inputs(Case(37, True, True, _DSTATE[37]))
    y, final_state = run_selective_scan(inputs, self.IMPLEMENTATION)
    y_ref, final_ref = run_selective_scan(inputs, "reference")
    assert max_abs_diff(y, y_ref) <= FORWARD_ATOL and max_abs_diff(final_state, final_ref) <= FORWARD_ATOL


class TestSelectiveScanReference:
  """The oracle itself against the float64 NumPy recurrence."""

  @pytest.mark.parametrize("case", matrix(FORWARD_CASES))
  def test_matches_numpy_float64(self, case):
    inputs = make_inputs(case)
    y, final_state = run_selective_scan(inputs, "reference")
    y64, final64 = selective_scan_numpy(**inputs)
    assert max_abs_diff(y, y64) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final64) <= FORWARD_ATOL


class TestSelectiveScanApi:
  def test_default_implementation_is_associative(self):
    inputs = make_inputs(Case(37, True, True, _DSTATE[37]))
    y_default, _ = run_selective_scan(inputs, None)
    y_associative, _ = run_selective_scan(inputs, "associative")
    np.testing.assert_array_equal(y_default, y_associative)

  def test_implementations_listed(self):
    assert set(SELECTIVE_SCAN_IMPLEMENTATIONS) == {"reference", "associative", "pallas", "pallas_tpu", "pallas_gpu",
                                                  "pallas_tpu_interpret", "pallas_gpu_interpret"}

  @pytest.mark.parametrize("backend, expected",
                           [("tpu", "pallas_tpu"), ("gpu", "pallas_gpu"), ("cpu", "associative")])
  def test_default_is_the_backends_kernel(self, backend, expected):
    resolved = common.resolve_implementation(None, available=SELECTIVE_SCAN_IMPLEMENTATIONS,
                                             defaults=selective_scan_api._DEFAULTS, backend=backend)
    assert resolved == expected

  def test_pallas_on_cpu_names_the_interpret_variants(self):
    inputs = make_inputs(Case(5, False, False, _DSTATE[5]))
    with pytest.raises(ValueError, match=r"implementation='pallas'.*current backend is 'cpu'.*pallas_tpu_interpret"):
      run_selective_scan(inputs, "pallas")

  def test_works_inside_jit(self):
    inputs = make_inputs(Case(5, False, False, _DSTATE[5]))
    args = [jnp.asarray(inputs[k]) for k in ("u", "delta", "A", "B", "C")]
    y = jax.jit(lambda *a: pallas_kernels.selective_scan(*a))(*args)
    np.testing.assert_allclose(y, selective_scan_numpy(*args)[0], atol=FORWARD_ATOL)


def _error_inputs():
  b, t, e, n = 2, 5, 6, 4
  return dict(
      u=jnp.zeros((b, t, e)),
      delta=jnp.ones((b, t, e)),
      A=-jnp.ones((e, n)),
      B=jnp.zeros((b, t, n)),
      C=jnp.zeros((b, t, n)),
  )


# (id, overrides of the valid call, regex the ValueError message must match)
ERROR_CASES = [
    ("u-rank", dict(u=jnp.zeros((2, 5, 6, 1))), r"^u must have rank 3"),
    ("u-empty", dict(u=jnp.zeros((2, 0, 6))), r"^u must have seqlen >= 1"),
    ("delta-shape", dict(delta=jnp.ones((2, 5, 7))), r"^delta must have shape .*\(2, 5, 6\)"),
    ("A-rank", dict(A=-jnp.ones((6,))), r"^A must have rank 2"),
    ("A-d_inner", dict(A=-jnp.ones((5, 4))), r"^A must have shape \(d_inner, dstate\) = \(6, 4\)"),
    ("B-shape", dict(B=jnp.zeros((2, 5, 3))), r"^B must have shape .*\(2, 5, 4\)"),
    ("B-per-channel", dict(B=jnp.zeros((2, 5, 6, 4))), r"^B must have shape"),
    ("C-shape", dict(C=jnp.zeros((2, 4, 4))), r"^C must have shape"),
    ("D-shape", dict(D=jnp.ones((6, 1))), r"^D must have shape \(d_inner,\)"),
    ("z-shape", dict(z=jnp.ones((2, 5))), r"^z must have shape"),
    ("delta_bias-shape", dict(delta_bias=jnp.ones((4,))), r"^delta_bias must have shape"),
    ("initial_state-shape", dict(initial_state=jnp.zeros((2, 4, 6))), r"^initial_state must have shape"),
    ("implementation-unknown", dict(implementation="chunked"), r"^implementation must be None or one of"),
    ("implementation-not-str", dict(implementation=0), r"^implementation must be None or one of"),
    ("block_sizes-type", dict(block_sizes=(8,)), r"^block_sizes must be None, ScanTpuBlockSizes or ScanGpuBlockSizes"),
    ("block_sizes-platform", dict(block_sizes=ScanTpuBlockSizes(), implementation="pallas_gpu_interpret"),
     r"^block_sizes for the gpu kernel must be a ScanGpuBlockSizes"),
]


@pytest.mark.parametrize("make, message", [
    (lambda: ScanTpuBlockSizes(block_channels=64), r"^ScanTpuBlockSizes.block_channels must be a multiple of 128"),
    (lambda: ScanTpuBlockSizes(block_time=12), r"^ScanTpuBlockSizes.block_time must be a multiple of 8"),
    (lambda: ScanTpuBlockSizes(block_time=-8), r"^ScanTpuBlockSizes.block_time must be a positive int"),
    (lambda: ScanGpuBlockSizes(block_channels=48), r"^ScanGpuBlockSizes.block_channels must be a power of two"),
    (lambda: ScanGpuBlockSizes(num_warps=0), r"^ScanGpuBlockSizes.num_warps must be a positive int"),
], ids=["tpu-channels-not-lanes", "tpu-time-not-sublanes", "tpu-time-negative", "gpu-channels-not-pow2",
        "gpu-warps-zero"])
def test_invalid_block_sizes_raise_value_error(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.parametrize("overrides, message", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_invalid_arguments_raise_value_error(overrides, message):
  kwargs = {**_error_inputs(), **overrides}
  positional = [kwargs.pop(k) for k in ("u", "delta", "A", "B", "C")]
  with pytest.raises(ValueError, match=message):
    pallas_kernels.selective_scan(*positional, **kwargs)
