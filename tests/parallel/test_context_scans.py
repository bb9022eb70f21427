"""Sequence-parallel SSD and selective scan equal the unsharded scans: outputs, final states and gradients.

The sequence is split over a ``context`` mesh axis of 8 virtual CPU devices (alone, or next to ``data`` or
``tensor``). Each case has a per-shard length that is not a multiple of the chunk (21 positions per shard, chunk 16),
a gate z, the D skip, fused dt processing and an initial state, so the correction term, the exchange and the final
state all matter. Outputs and final states are compared to the sequential references; gradients of a scalar loss of
both outputs to the unsharded jnp scans (`chunked`, `associative`). Tolerances (float32): outputs and states 2e-5 of
their largest magnitude, gradients 1e-4 of the largest gradient (observed ~1e-7 and ~1e-6: the sharded scans only
reorder float32 sums).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import selective_scan, ssd
from pallas_kernels.selective_scan.context_parallel import selective_scan_context_parallel
from pallas_kernels.ssd.context_parallel import ssd_context_parallel

CHUNK = 16
PER_SHARD = 21  # not a multiple of CHUNK


def _mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def _close(actual, expected, rtol, what):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  error = float(np.max(np.abs(actual - expected)))
  assert error <= rtol * float(np.max(np.abs(expected))) + 1e-9, f"{what}: max error {error}"


def _ssd_inputs(length, nheads=4, ngroups=2, batch=2, headdim=8, dstate=16):
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  return dict(
      x=jax.random.normal(keys[0], (batch, length, nheads, headdim)),
      dt=jax.random.normal(keys[1], (batch, length, nheads)) - 1.0,  # raw: dt_bias + softplus make it positive
      A=-jnp.exp(jax.random.uniform(keys[2], (nheads,), minval=-1.0, maxval=1.5)),
      B=jax.random.normal(keys[3], (batch, length, ngroups, dstate)),
      C=jax.random.normal(keys[4], (batch, length, ngroups, dstate)),
      D=jax.random.normal(keys[5], (nheads,)),
      z=jax.random.normal(keys[6], (batch, length, nheads, headdim)),
      dt_bias=jax.random.normal(keys[7], (nheads,)),
      initial_state=jax.random.normal(keys[7], (batch, nheads, headdim, dstate)),
  )


SSD_MESHES = [
    pytest.param((8,), ("context",), {}, 4, 2, id="context8", marks=pytest.mark.slow),  # models cover it by default
    pytest.param((2, 4), ("data", "context"), {"batch_axes": "data"}, 4, 2, id="data2-context4"),
    pytest.param((4, 2), ("context", "tensor"), {"head_axes": "tensor"}, 4, 1, id="context4-tensor2-sliced-groups",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("shape, names, axes, nheads, ngroups", SSD_MESHES)
def test_ssd_context_parallel_matches_the_unsharded_scan(shape, names, axes, nheads, ngroups):
  # Given inputs whose sequence splits into shards of 21 positions (not a chunk multiple) ...
  mesh = _mesh(shape, names)
  shards = mesh.shape["context"]
  inputs = _ssd_inputs(shards * PER_SHARD, nheads=nheads, ngroups=ngroups)
  x, dt, A, B, C = (inputs.pop(k) for k in ("x", "dt", "A", "B", "C"))
  options = dict(chunk_size=CHUNK, dt_softplus=True, return_final_state=True, **inputs)

  def sharded(x, dt, A, B, C):
    return ssd_context_parallel(x, dt, A, B, C, mesh=mesh, context_axes="context", **axes, **options)

  def unsharded(implementation):
    return lambda x, dt, A, B, C: ssd(x, dt, A, B, C, implementation=implementation, **options)

  def loss(fn):
    def scalar(*args):
      y, state = fn(*args)
      return jnp.sum(y * jnp.cos(y)) + jnp.sum(state * jnp.sin(state))
    return jax.jit(jax.grad(scalar, argnums=(0, 1, 2, 3, 4)))

  # When the scan runs with the sequence split over the context axis ...
  y, state = jax.jit(sharded)(x, dt, A, B, C)
  y_ref, state_ref = jax.jit(unsharded("reference"))(x, dt, A, B, C)
  # ... then outputs, final states and all input gradients equal the unsharded scan's.
  _close(y, y_ref, 2e-5, "y")
  _close(state, state_ref, 2e-5, "final state")
  for name, grad, grad_ref in zip("x dt A B C".split(), loss(sharded)(x, dt, A, B, C),
                                  loss(unsharded("chunked"))(x, dt, A, B, C)):
    _close(grad, grad_ref, 1e-4, f"d{name}")


def test_ssd_context_parallel_without_initial_state_or_gate_and_its_errors():
  mesh = _mesh((8,), ("context",))
  inputs = _ssd_inputs(8 * 5)  # shards of 5 positions, shorter than a chunk
  x, dt, A, B, C = (inputs[k] for k in ("x", "dt", "A", "B", "C"))
  dt = jax.nn.softplus(dt)
  y = jax.jit(lambda *a: ssd_context_parallel(*a, chunk_size=CHUNK, mesh=mesh, context_axes="context"))(
      x, dt, A, B, C)
  _close(y, ssd(x, dt, A, B, C, chunk_size=CHUNK, implementation="reference"), 2e-5, "y")
  with pytest.raises(ValueError, match=r"x.shape\[1\] \(seqlen\) = 39 is not divisible by the 8 shards"):
    ssd_context_parallel(x[:, 1:], dt[:, 1:], A, B[:, 1:], C[:, 1:], chunk_size=CHUNK, mesh=mesh,
                         context_axes="context")
  with pytest.raises(ValueError, match="context_axes"):
    ssd_context_parallel(x, dt, A, B, C, chunk_size=CHUNK, mesh=mesh, context_axes=None)


def _scan_inputs(length, batch=2, d_inner=6, dstate=4):
  keys = jax.random.split(jax.random.PRNGKey(1), 8)
  return dict(
      u=jax.random.normal(keys[0], (batch, length, d_inner)),
      delta=jax.random.normal(keys[1], (batch, length, d_inner)) - 1.0,
      A=-jnp.exp(jax.random.uniform(keys[2], (d_inner, dstate), minval=-1.0, maxval=1.5)),
      B=jax.random.normal(keys[3], (batch, length, dstate)),
      C=jax.random.normal(keys[4], (batch, length, dstate)),
      D=jax.random.normal(keys[5], (d_inner,)),
      z=jax.random.normal(keys[6], (batch, length, d_inner)),
      delta_bias=jax.random.normal(keys[7], (d_inner,)),
      initial_state=jax.random.normal(keys[7], (batch, d_inner, dstate)),
  )


@pytest.mark.parametrize("shape, names, axes", [
    pytest.param((8,), ("context",), {}, id="context8", marks=pytest.mark.slow),
    pytest.param((2, 4), ("data", "context"), {"batch_axes": "data"}, id="data2-context4"),
    pytest.param((4, 2), ("context", "tensor"), {"channel_axes": "tensor"}, id="context4-tensor2",
                 marks=pytest.mark.slow),
])
def test_selective_scan_context_parallel_matches_the_unsharded_scan(shape, names, axes):
  mesh = _mesh(shape, names)
  inputs = _scan_inputs(mesh.shape["context"] * 13)
  u, delta, A, B, C = (inputs.pop(k) for k in ("u", "delta", "A", "B", "C"))
  options = dict(delta_softplus=True, return_final_state=True, **inputs)

  def sharded(u, delta, A, B, C):
    return selective_scan_context_parallel(u, delta, A, B, C, mesh=mesh, context_axes="context", **axes, **options)

  def unsharded(implementation):
    return lambda u, delta, A, B, C: selective_scan(u, delta, A, B, C, implementation=implementation, **options)

  def loss(fn):
    def scalar(*args):
      y, state = fn(*args)
      return jnp.sum(y * jnp.cos(y)) + jnp.sum(state * jnp.sin(state))
    return jax.jit(jax.grad(scalar, argnums=(0, 1, 2, 3, 4)))

  y, state = jax.jit(sharded)(u, delta, A, B, C)
  y_ref, state_ref = jax.jit(unsharded("reference"))(u, delta, A, B, C)
  _close(y, y_ref, 2e-5, "y")
  _close(state, state_ref, 2e-5, "final state")
  for name, grad, grad_ref in zip("u delta A B C".split(), loss(sharded)(u, delta, A, B, C),
                                  loss(unsharded("associative"))(u, delta, A, B, C)):
    _close(grad, grad_ref, 1e-4, f"d{name}")


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["pallas_gpu_interpret", "pallas_tpu_interpret"])
def test_ssd_context_parallel_runs_the_pallas_kernels_per_shard(implementation):
  # The local scans may be any implementation: here the Pallas kernels in interpret mode, on (data 2, context 4).
  mesh = _mesh((2, 4), ("data", "context"))
  inputs = _ssd_inputs(4 * PER_SHARD)
  x, dt, A, B, C = (inputs.pop(k) for k in ("x", "dt", "A", "B", "C"))
  options = dict(chunk_size=CHUNK, dt_softplus=True, return_final_state=True, **inputs)

  def loss(fn):
    def scalar(*args):
      y, state = fn(*args)
      return jnp.sum(y * jnp.cos(y)) + jnp.sum(state * jnp.sin(state))
    return jax.jit(jax.value_and_grad(scalar, argnums=(0, 1, 2, 3, 4)))

  value, grads = loss(lambda *a: ssd_context_parallel(*a, mesh=mesh, context_axes="context", batch_axes="data",
                                                      implementation=implementation, **options))(x, dt, A, B, C)
  value_ref, grads_ref = loss(lambda *a: ssd(*a, implementation="chunked", **options))(x, dt, A, B, C)
  np.testing.assert_allclose(float(value), float(value_ref), rtol=1e-5)
  for name, grad, grad_ref in zip("x dt A B C".split(), grads, grads_ref):
    _close(grad, grad_ref, 1e-4, f"d{name}")
