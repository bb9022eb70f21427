"""Tests for `pallas_kernels.ssd` (Mamba-2 SSD).

Every implementation is held to the sequential "reference" implementation (forward and gradients) and to a float64
NumPy recurrence written here with plain loops, independent of the library. A new implementation gets the whole
matrix by subclassing `SsdImplementationTests` with its name in `IMPLEMENTATION`: the Pallas kernels run it in
interpret mode ("pallas_gpu_interpret", "pallas_tpu_interpret"). The fused options (dt_bias, dt_softplus, dt_limit,
z) are held to the unfused composition written out here.

Tolerances:
  float32 forward: max abs error <= 1e-5 (outputs and final states).
  float32 gradients: max abs error <= 1e-4 * max |reference gradient|, for every input.
  bfloat16 inputs (x, dt, B, C): the implementations compute in float32 and round only the output to bfloat16
    (relative rounding error <= 2^-9), so y must be within 1e-2 * max |y| of the float64 recurrence run on the
    same (bf16-rounded) inputs, i.e. about 2.5 bf16 ulps at the largest output; the float32 final state within
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
from pallas_kernels.ssd import IMPLEMENTATIONS as SSD_IMPLEMENTATIONS
from pallas_kernels.ssd import api as ssd_api
from pallas_kernels.ssd.block_sizes import SsdGpuBlockSizes, SsdTpuBlockSizes
from pallas_kernels.ssd.reference import ssd_reference

NHEADS = 4
BATCH = 2
CHUNK_SIZE = 8
FORWARD_ATOL = 1e-5
GRAD_RTOL = 1e-4
BF16_RTOL = 1e-2
ARG_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


@dataclasses.dataclass(frozen=True)
class Case:
  seqlen: int
  ngroups: int
  initial_state: bool
  headdim: int
  dstate: int

  def __str__(self) -> str:
    init = "init" if self.initial_state else "noinit"
    return f"T{self.seqlen}-G{self.ngroups}-{init}-P{self.headdim}N{self.dstate}"


# Lengths: shorter than one chunk (run as one short chunk), exactly two chunks, and 4 chunks + 5 (padded to 5 chunks).
# Groups: 1, between, = nheads.
_SIZES = {5: (3, 5), 16: (8, 8), 37: (4, 6)}  # seqlen -> (headdim, dstate)
ALL_CASES = [Case(t, g, init, *_SIZES[t]) for t in (5, 16, 37) for g in (1, 2, NHEADS) for init in (False, True)]
# Compilation dominates the run time, so the default run covers the matrix and `-m slow` runs all of it. Forward:
# every (length, groups) pair, each length and each group count with and without initial state.
FORWARD_CASES = [
    Case(5, 1, False, *_SIZES[5]),
    Case(5, 2, True, *_SIZES[5]),
    Case(5, NHEADS, False, *_SIZES[5]),
    Case(16, 1, True, *_SIZES[16]),
    Case(16, 2, False, *_SIZES[16]),
    Case(16, NHEADS, True, *_SIZES[16]),
    Case(37, 1, False, *_SIZES[37]),
    Case(37, 2, True, *_SIZES[37]),
    Case(37, NHEADS, True, *_SIZES[37]),
]
# Gradients (two backward passes to compile per case): every length and group count, initial state on and off.
GRAD_CASES = [
    Case(5, 1, True, *_SIZES[5]),
    Case(16, 2, False, *_SIZES[16]),
    Case(37, 2, True, *_SIZES[37]),
    Case(37, NHEADS, False, *_SIZES[37]),
]
BF16_CASES = [Case(16, 1, False, *_SIZES[16]), Case(37, 2, True, *_SIZES[37])]
# The TPU kernel in TPU interpret mode costs about twice the GPU kernel in interpret mode (it simulates TPU memory
# and DMAs), so by default it runs a subset that still covers every length, group count and initial-state setting
# (and `-m slow` runs the rest of the matrix).
TPU_INTERPRET_FORWARD_CASES = [
    Case(5, 2, True, *_SIZES[5]),
    Case(16, NHEADS, False, *_SIZES[16]),
    Case(37, 1, False, *_SIZES[37]),
    Case(37, 2, True, *_SIZES[37]),
]
TPU_INTERPRET_GRAD_CASES = [Case(5, 1, True, *_SIZES[5]), Case(37, NHEADS, False, *_SIZES[37])]


def matrix(default_cases):
  """All cases as pytest params; those not in `default_cases` are marked slow."""
  return [pytest.param(c, id=str(c), marks=() if c in default_cases else pytest.mark.slow) for c in ALL_CASES]


def make_inputs(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 inputs in the ranges a Mamba-2 layer sees (dt in (0.05, 0.6), A in (-3, -0.5))."""
  rng = np.random.default_rng(seed)
  b, t, h, p, g, n = BATCH, case.seqlen, NHEADS, case.headdim, case.ngroups, case.dstate
  inputs = {
      "x": rng.normal(size=(b, t, h, p)),
      "dt": rng.uniform(0.05, 0.6, size=(b, t, h)),
      "A": -rng.uniform(0.5, 3.0, size=(h,)),
      "B": rng.normal(size=(b, t, g, n)),
      "C": rng.normal(size=(b, t, g, n)),
      "D": rng.normal(size=(h,)),
      "initial_state": rng.normal(size=(b, h, p, n)) if case.initial_state else None,
  }
  return {k: None if v is None else v.astype(np.float32) for k, v in inputs.items()}


def ssd_numpy(x, dt, A, B, C, D=None, initial_state=None):
  """The recurrence in float64 with plain loops: S = exp(dt*A) S + dt x ⊗ B; y = S·C + D x."""
  x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
  batch, seqlen, nheads, headdim = x.shape
  heads_per_group = nheads // B.shape[2]
  state = np.zeros((batch, nheads, headdim, B.shape[3]))
  if initial_state is not None:
    state[...] = np.asarray(initial_state, np.float64)
  y = np.zeros(x.shape)
  for b in range(batch):
    for t in range(seqlen):
      for h in range(nheads):
        g = h // heads_per_group
        state[b, h] = np.exp(dt[b, t, h] * A[h]) * state[b, h] + dt[b, t, h] * np.outer(x[b, t, h], B[b, t, g])
        y[b, t, h] = state[b, h] @ C[b, t, g]
        if D is not None:
          y[b, t, h] += float(D[h]) * x[b, t, h]
  return y, state


def _call_ssd(arrays, implementation, chunk_size, block_sizes=None, **options):
  args = {k: arrays.get(k) for k in ARG_NAMES}
  positional = [args.pop(k) for k in ("x", "dt", "A", "B", "C")]
  return pallas_kernels.ssd(*positional, **args, chunk_size=chunk_size, return_final_state=True,
                            implementation=implementation, block_sizes=block_sizes, **options)


# Interpret-mode kernels become large XLA programs whose compilation dominates these tests (they run on tiny
# inputs); compiling them without LLVM's backend optimisations roughly halves that time.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
_jit_forward = {
    fast: jax.jit(_call_ssd, static_argnames=("implementation", "chunk_size", "block_sizes"),
                  compiler_options=_FAST_COMPILE if fast else None)
    for fast in (False, True)
}


def _is_interpret(implementation) -> bool:
  return implementation is not None and implementation.endswith("_interpret")


def run_ssd(inputs, implementation, chunk_size=CHUNK_SIZE, block_sizes=None):
  """Returns (y, final_state) of `pallas_kernels.ssd` on a dict like `make_inputs`'s (missing keys: None)."""
  arrays = {k: jnp.asarray(v) for k, v in inputs.items() if v is not None}
  return _jit_forward[_is_interpret(implementation)](arrays, implementation=implementation, chunk_size=chunk_size,
                                                     block_sizes=block_sizes)


def ssd_gradients(inputs, implementation, seed=1, block_sizes=None):
  """Gradients of <y, gy> + <final_state, gs> (random cotangents) w.r.t. every given input, as a dict."""
  b, _, h, p = inputs["x"].shape
  rng = np.random.default_rng(seed)
  gy = rng.normal(size=inputs["x"].shape).astype(np.float32)
  gs = rng.normal(size=(b, h, p, inputs["B"].shape[3])).astype(np.float32)
  arrays = {k: v for k, v in inputs.items() if v is not None}
  return _jit_gradients[_is_interpret(implementation)](arrays, gy, gs, implementation=implementation,
                                                       block_sizes=block_sizes)


def _gradients(arrays, gy, gs, *, implementation, block_sizes):
  def loss(arrays):
    y, final_state = _call_ssd(arrays, implementation, CHUNK_SIZE, block_sizes)
    return jnp.sum(y * gy) + jnp.sum(final_state * gs)

  return jax.grad(loss)(arrays)


# Module level and jitted, so that tests with the same shapes share one compilation.
_jit_gradients = {
    fast: jax.jit(_gradients, static_argnames=("implementation", "block_sizes"),
                  compiler_options=_FAST_COMPILE if fast else None)
    for fast in (False, True)
}


def max_abs(a) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64))))


def max_abs_diff(a, b) -> float:
  return max_abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))


class SsdImplementationTests:
  """The test matrix every non-reference implementation runs; subclasses set IMPLEMENTATION."""

  IMPLEMENTATION: str

  @pytest.mark.parametrize("case", matrix(FORWARD_CASES))
  def test_forward_matches_reference(self, case):
    inputs = make_inputs(case)
    y, final_state = run_ssd(inputs, self.IMPLEMENTATION)
    y_ref, final_ref = run_ssd(inputs, "reference")
    assert y.shape == inputs["x"].shape and y.dtype == jnp.float32
    assert final_state.shape == final_ref.shape and final_state.dtype == jnp.float32
    assert max_abs_diff(y, y_ref) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final_ref) <= FORWARD_ATOL

  @pytest.mark.parametrize("case", matrix(FORWARD_CASES))
  def test_forward_matches_numpy_float64(self, case):
    inputs = make_inputs(case)
    y, final_state = run_ssd(inputs, self.IMPLEMENTATION)
    y64, final64 = ssd_numpy(**inputs)
    assert max_abs_diff(y, y64) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final64) <= FORWARD_ATOL

  @pytest.mark.parametrize("case", matrix(GRAD_CASES))
  def test_gradients_match_reference(self, case):
    inputs = make_inputs(case)
    grads = ssd_gradients(inputs, self.IMPLEMENTATION)
    grads_ref = ssd_gradients(inputs, "reference")
    assert grads.keys() == grads_ref.keys()
    for name, grad_ref in grads_ref.items():
      assert grads[name].shape == grad_ref.shape, name
      error = max_abs_diff(grads[name], grad_ref)
      assert error <= GRAD_RTOL * max_abs(grad_ref), f"d/d{name}: max abs error {error}"

  @pytest.mark.parametrize("case", BF16_CASES, ids=str)
  def test_bfloat16_matches_numpy_float64(self, case):
    # Given bf16 x, dt, B, C (A, D and the state stay float32, as in a Mamba-2 layer) ...
    inputs = make_inputs(case)
    for name in ("x", "dt", "B", "C"):
      inputs[name] = np.asarray(jnp.asarray(inputs[name], jnp.bfloat16))
    # ... when the implementation runs on them ...
    y, final_state = run_ssd(inputs, self.IMPLEMENTATION)
    # ... then y is bf16 and within output rounding of the float64 recurrence on the same rounded inputs.
    y64, final64 = ssd_numpy(**{k: None if v is None else np.asarray(v, np.float64) for k, v in inputs.items()})
    assert y.dtype == jnp.bfloat16 and final_state.dtype == jnp.float32
    assert max_abs_diff(y, y64) <= BF16_RTOL * max_abs(y64)
    assert max_abs_diff(final_state, final64) <= 1e-4 * max_abs(final64)

  def test_gradients_finite_under_strong_decay(self):
    # dt * A down to -128 per step: the masked (upper) part of exp(segsum) would overflow if it were exponentiated.
    inputs = make_inputs(Case(37, 2, True, *_SIZES[37]))  # the shapes of a GRAD_CASES entry: no recompilation
    rng = np.random.default_rng(3)
    inputs["dt"] = rng.uniform(2.0, 8.0, size=inputs["dt"].shape).astype(np.float32)
    inputs["A"] = -rng.uniform(8.0, 16.0, size=inputs["A"].shape).astype(np.float32)
    y, final_state = run_ssd(inputs, self.IMPLEMENTATION)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(final_state))
    for name, grad in ssd_gradients(inputs, self.IMPLEMENTATION).items():
      assert np.all(np.isfinite(grad)), name

  @pytest.mark.parametrize("chunk_size", [1, 5, 64], ids=lambda q: f"Q{q}")
  def test_other_chunk_sizes(self, chunk_size):
    inputs = make_inputs(Case(37, 2, True, *_SIZES[37]))
    y, final_state = run_ssd(inputs, self.IMPLEMENTATION, chunk_size=chunk_size)
    y_ref, final_ref = run_ssd(inputs, "reference")
    assert max_abs_diff(y, y_ref) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final_ref) <= FORWARD_ATOL

  def test_fused_options_match_unfused_composition(self):
    # Given raw (pre-softplus) dt, a dt bias, a clamp and a z gate ...
    inputs = make_inputs(Case(37, 2, True, *_SIZES[37]))
    rng = np.random.default_rng(4)
    b, t, h, p = inputs["x"].shape
    inputs["dt"] = rng.normal(-1.0, 1.5, size=(b, t, h)).astype(np.float32)
    inputs["dt_bias"] = rng.uniform(-0.5, 0.5, size=(h,)).astype(np.float32)
    inputs["z"] = rng.normal(size=(b, t, h, p)).astype(np.float32)
    arrays = {k: jnp.asarray(v) for k, v in inputs.items()}
    gy = jnp.asarray(rng.normal(size=(b, t, h, p)), jnp.float32)
    gs = jnp.asarray(rng.normal(size=inputs["initial_state"].shape), jnp.float32)
    # ... when the implementation applies them (dt_softplus and dt_limit on) ...
    fused = _jit_fused[_is_interpret(self.IMPLEMENTATION)](arrays, gy, gs, implementation=self.IMPLEMENTATION)
    # ... then outputs, final state and every gradient equal the reference run on dt and y processed by hand.
    unfused = _jit_fused[False](arrays, gy, gs, implementation=None)
    for name in unfused:
      tolerance = FORWARD_ATOL if name in ("y", "final_state") else GRAD_RTOL * max_abs(unfused[name])
      assert max_abs_diff(fused[name], unfused[name]) <= tolerance, name

  def test_optional_arguments_default_to_zero(self):
    # D=None is D=0, initial_state=None is a zero state, and the output alone is returned by default.
    case = Case(16, 2, True, *_SIZES[16])
    inputs = make_inputs(case)
    x, dt, A, B, C = (jnp.asarray(inputs[k]) for k in ("x", "dt", "A", "B", "C"))
    kwargs = dict(chunk_size=CHUNK_SIZE, implementation=self.IMPLEMENTATION)
    y = pallas_kernels.ssd(x, dt, A, B, C, **kwargs)
    y_zeros = pallas_kernels.ssd(
        x, dt, A, B, C, D=jnp.zeros(NHEADS), initial_state=jnp.zeros(inputs["initial_state"].shape), **kwargs
    )
    assert isinstance(y, jax.Array)
    np.testing.assert_allclose(y, y_zeros, rtol=0, atol=1e-6)


DT_LIMIT = (0.05, 1.5)


def _fused_outputs_and_gradients(arrays, gy, gs, *, implementation):
  """{y, final_state, d<input> for every input} with dt_bias, softplus, dt_limit and z; `implementation=None` is the
  unfused composition: the reference scan on dt processed, and y gated, by plain jnp here."""

  def run(arrays):
    if implementation is None:
      dt = jnp.clip(jax.nn.softplus(arrays["dt"] + arrays["dt_bias"]), *DT_LIMIT)
      y, final_state = ssd_reference(arrays["x"], dt, arrays["A"], arrays["B"], arrays["C"], D=arrays["D"],
                                     initial_state=arrays["initial_state"])
      return y * jax.nn.silu(arrays["z"]), final_state
    options = dict(z=arrays["z"], dt_bias=arrays["dt_bias"], dt_softplus=True, dt_limit=DT_LIMIT)
    return _call_ssd({k: v for k, v in arrays.items() if k not in options}, implementation, CHUNK_SIZE, **options)

  def loss(arrays):
    y, final_state = run(arrays)
    return jnp.sum(y * gy) + jnp.sum(final_state * gs), (y, final_state)

  grads, (y, final_state) = jax.grad(loss, has_aux=True)(arrays)
  return {"y": y, "final_state": final_state, **{f"d{k}": v for k, v in grads.items()}}


_jit_fused = {
    fast: jax.jit(_fused_outputs_and_gradients, static_argnames=("implementation",),
                  compiler_options=_FAST_COMPILE if fast else None)
    for fast in (False, True)
}


class TestSsdChunked(SsdImplementationTests):
  IMPLEMENTATION = "chunked"


class TestSsdPallasGpuInterpret(SsdImplementationTests):
  """The Triton kernels in Pallas' interpret mode: the whole matrix."""

  IMPLEMENTATION = "pallas_gpu_interpret"


class TestSsdPallasTpuInterpret(SsdImplementationTests):
  """The Mosaic kernels in TPU interpret mode: a subset of the matrix by default (see TPU_INTERPRET_*_CASES)."""

  IMPLEMENTATION = "pallas_tpu_interpret"

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

  @pytest.mark.parametrize("chunk_size", [pytest.param(q, marks=() if q == 5 else pytest.mark.slow)
                                          for q in (1, 5, 64)], ids=lambda q: f"Q{q}")
  def test_other_chunk_sizes(self, chunk_size):
    super().test_other_chunk_sizes(chunk_size)

  @pytest.mark.slow
  def test_gradients_finite_under_strong_decay(self):
    super().test_gradients_finite_under_strong_decay()

  @pytest.mark.slow
  def test_optional_arguments_default_to_zero(self):
    super().test_optional_arguments_default_to_zero()

  @pytest.mark.parametrize("block_heads", [pytest.param(1, marks=pytest.mark.slow), 2])
  def test_block_heads_smaller_than_a_group(self, block_heads):
    # One B/C group of 4 heads split over grid steps of 1 or 2 heads: the backward sums dB, dC over the steps.
    inputs = make_inputs(Case(16, 1, True, *_SIZES[16]))
    block_sizes = SsdTpuBlockSizes(block_heads=block_heads)
    y, final_state = run_ssd(inputs, self.IMPLEMENTATION, block_sizes=block_sizes)
    y_ref, final_ref = run_ssd(inputs, "reference")
    assert max_abs_diff(y, y_ref) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final_ref) <= FORWARD_ATOL
    grads = ssd_gradients(inputs, self.IMPLEMENTATION, block_sizes=block_sizes)
    for name, grad_ref in ssd_gradients(inputs, "reference").items():
      assert max_abs_diff(grads[name], grad_ref) <= GRAD_RTOL * max_abs(grad_ref), name


class TestSsdReference:
  """The oracle itself against the float64 NumPy recurrence."""

  @pytest.mark.parametrize("case", matrix(FORWARD_CASES))
  def test_matches_numpy_float64(self, case):
    inputs = make_inputs(case)
    y, final_state = run_ssd(inputs, "reference")
    y64, final64 = ssd_numpy(**inputs)
    assert max_abs_diff(y, y64) <= FORWARD_ATOL
    assert max_abs_diff(final_state, final64) <= FORWARD_ATOL


class TestSsdApi:
  def test_default_implementation_is_chunked(self):
    inputs = make_inputs(Case(37, 2, True, *_SIZES[37]))
    y_default, _ = run_ssd(inputs, None)
    y_chunked, _ = run_ssd(inputs, "chunked")
    np.testing.assert_array_equal(y_default, y_chunked)

  def test_implementations_listed(self):
    assert set(SSD_IMPLEMENTATIONS) == {"reference", "chunked", "pallas", "pallas_tpu", "pallas_gpu",
                                       "pallas_tpu_interpret", "pallas_gpu_interpret"}

  @pytest.mark.parametrize("backend, expected", [("tpu", "pallas_tpu"), ("gpu", "pallas_gpu"), ("cpu", "chunked")])
  def test_default_is_the_backends_kernel(self, backend, expected):
    resolved = common.resolve_implementation(None, available=SSD_IMPLEMENTATIONS, defaults=ssd_api._DEFAULTS,
                                             backend=backend)
    assert resolved == expected

  def test_pallas_on_cpu_names_the_interpret_variants(self):
    inputs = make_inputs(Case(5, 1, False, *_SIZES[5]))
    with pytest.raises(ValueError, match=r"implementation='pallas'.*current backend is 'cpu'.*pallas_tpu_interpret"):
      run_ssd(inputs, "pallas")

  def test_works_inside_jit(self):
    inputs = make_inputs(Case(5, 1, False, *_SIZES[5]))
    args = [jnp.asarray(inputs[k]) for k in ("x", "dt", "A", "B", "C")]
    y = jax.jit(lambda *a: pallas_kernels.ssd(*a, chunk_size=4))(*args)
    np.testing.assert_allclose(y, ssd_numpy(*args)[0], atol=FORWARD_ATOL)


def _error_inputs():
  b, t, h, p, g, n = 2, 5, 4, 3, 2, 5
  return dict(
      x=jnp.zeros((b, t, h, p)),
      dt=jnp.ones((b, t, h)),
      A=-jnp.ones((h,)),
      B=jnp.zeros((b, t, g, n)),
      C=jnp.zeros((b, t, g, n)),
  )


# (id, overrides of the valid call, regex the ValueError message must match)
ERROR_CASES = [
    ("x-rank", dict(x=jnp.zeros((2, 5, 12))), r"^x must have rank 4"),
    ("dt-shape", dict(dt=jnp.ones((2, 5, 3))), r"^dt must have shape .*\(2, 5, 4\)"),
    ("A-shape", dict(A=-jnp.ones((4, 1))), r"^A must have shape \(nheads,\)"),
    ("B-rank", dict(B=jnp.zeros((2, 5, 10))), r"^B must have rank 4"),
    ("B-seqlen", dict(B=jnp.zeros((2, 6, 2, 5))), r"^B must have shape"),
    ("C-shape", dict(C=jnp.zeros((2, 5, 2, 6))), r"^C must have shape .*\(2, 5, 2, 5\)"),
    ("ngroups", dict(B=jnp.zeros((2, 5, 3, 5)), C=jnp.zeros((2, 5, 3, 5))), r"ngroups = 3 .* must divide nheads = 4"),
    ("D-shape", dict(D=jnp.ones((3,))), r"^D must have shape \(nheads,\)"),
    ("initial_state-shape", dict(initial_state=jnp.zeros((2, 4, 5, 3))), r"^initial_state must have shape"),
    ("chunk_size-zero", dict(chunk_size=0), r"^chunk_size must be a positive int"),
    ("chunk_size-negative", dict(chunk_size=-8), r"^chunk_size must be a positive int"),
    ("chunk_size-float", dict(chunk_size=8.0), r"^chunk_size must be a positive int"),
    ("chunk_size-bool", dict(chunk_size=True), r"^chunk_size must be a positive int"),
    ("chunk_size-str", dict(chunk_size="8"), r"^chunk_size must be a positive int"),
    ("implementation-unknown", dict(implementation="pallas_v9"), r"^implementation must be None or one of"),
    ("implementation-not-str", dict(implementation=1), r"^implementation must be None or one of"),
    ("z-shape", dict(z=jnp.zeros((2, 5, 4, 4))), r"^z must have shape"),
    ("dt_bias-shape", dict(dt_bias=jnp.zeros((2,))), r"^dt_bias must have shape \(nheads,\)"),
    ("dt_limit-length", dict(dt_limit=(0.1,)), r"^dt_limit must be None or a pair"),
    ("dt_limit-order", dict(dt_limit=(1.0, 0.1)), r"^dt_limit must be a pair \(low, high\) with low <= high"),
    ("block_sizes-type", dict(block_sizes=(8,)), r"^block_sizes must be None, SsdTpuBlockSizes or SsdGpuBlockSizes"),
    ("block_sizes-platform", dict(block_sizes=SsdGpuBlockSizes(), implementation="pallas_tpu_interpret"),
     r"^block_sizes for the tpu kernel must be a SsdTpuBlockSizes"),
    ("block_heads-split-group", dict(block_sizes=SsdTpuBlockSizes(block_heads=3), implementation="pallas_tpu"),
     r"^SsdTpuBlockSizes.block_heads = 3 must divide the heads per group .* = 2"),
]


@pytest.mark.parametrize("make, message", [
    (lambda: SsdTpuBlockSizes(block_heads=0), r"^SsdTpuBlockSizes.block_heads must be a positive int"),
    (lambda: SsdTpuBlockSizes(vmem_limit_bytes=1.5), r"^SsdTpuBlockSizes.vmem_limit_bytes must be a positive int"),
    (lambda: SsdGpuBlockSizes(num_warps=3), r"^SsdGpuBlockSizes.num_warps must be a power of two"),
    (lambda: SsdGpuBlockSizes(num_stages=0), r"^SsdGpuBlockSizes.num_stages must be a positive int"),
], ids=["block_heads-zero", "vmem-float", "num_warps-not-pow2", "num_stages-zero"])
def test_invalid_block_sizes_raise_value_error(make, message):
  with pytest.raises(ValueError, match=message):
    make()


@pytest.mark.parametrize("overrides, message", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_invalid_arguments_raise_value_error(overrides, message):
  kwargs = {**_error_inputs(), "chunk_size": 4, **overrides}
  positional = [kwargs.pop(k) for k in ("x", "dt", "A", "B", "C")]
  with pytest.raises(ValueError, match=message):
    pallas_kernels.ssd(*positional, **kwargs)
