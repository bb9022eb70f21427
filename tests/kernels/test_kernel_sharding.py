"""`pallas_kernels.sharding`: the kernels inside `shard_map` on 8 virtual CPU devices equal the unsharded call.

tests/conftest.py gives this process 8 CPU devices; the mesh is (data=2, tensor=4). The kernels run in interpret mode
(the GPU kernels through Pallas' interpreter; one case through TPU interpret mode), outputs, final states and
gradients are compared with the same kernel called without a mesh, and the compiled sharded program must not
gather the sharded inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pallas_kernels
from pallas_kernels.sharding import selective_scan_sharded, ssd_sharded

BATCH, SEQLEN, NHEADS, HEADDIM, DSTATE, CHUNK = 4, 21, 8, 3, 5, 8
D_INNER = 8
ATOL = 1e-5
_FAST_COMPILE = {"xla_backend_optimization_level": 0}  # interpret-mode programs: compile time dominates


@pytest.fixture(scope="module")
def mesh():
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets --xla_force_host_platform_device_count=8)")
  return jax.make_mesh((2, 4), ("data", "tensor"))


def _ssd_inputs(ngroups, seed=0):
  rng = np.random.default_rng(seed)
  b, t, h, p, n = BATCH, SEQLEN, NHEADS, HEADDIM, DSTATE
  return dict(
      x=rng.normal(size=(b, t, h, p)), dt=rng.normal(-1.0, 1.0, size=(b, t, h)), A=-rng.uniform(0.5, 3.0, size=(h,)),
      B=rng.normal(size=(b, t, ngroups, n)), C=rng.normal(size=(b, t, ngroups, n)), D=rng.normal(size=(h,)),
      dt_bias=rng.uniform(-0.5, 0.5, size=(h,)), initial_state=rng.normal(size=(b, h, p, n)),
  )


_SSD_SPECS = dict(x=P("data", None, "tensor", None), dt=P("data", None, "tensor"), A=P("tensor"), D=P("tensor"),
                  dt_bias=P("tensor"), initial_state=P("data", "tensor", None, None))


def _put(inputs, mesh, specs, default):
  return {k: jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, specs.get(k, default)))
          for k, v in inputs.items()}


def _ssd_loss(call, implementation, **sharding):
  def loss(arrays, gy, gs):
    a = dict(arrays)
    y, final_state = call(a.pop("x"), a.pop("dt"), a.pop("A"), a.pop("B"), a.pop("C"), chunk_size=CHUNK,
                          dt_softplus=True, return_final_state=True, implementation=implementation, **a, **sharding)
    return jnp.sum(y * gy) + jnp.sum(final_state * gs), (y, final_state)

  return loss


def test_ssd_sharded_reads_axes_from_the_inputs(mesh):
  # Given inputs sharded over batch ("data") and heads ("tensor"), 4 groups (one per head shard) ...
  implementation = "pallas_gpu_interpret"
  inputs = _ssd_inputs(4)
  sharded = _put(inputs, mesh, _SSD_SPECS, P("data", None, "tensor", None))
  # ... when the kernel runs on the shards, the axes read from x's sharding (eagerly), and unsharded ...
  kwargs = dict(chunk_size=CHUNK, dt_softplus=True, return_final_state=True, implementation=implementation)
  y, final_state = ssd_sharded(**sharded, **kwargs)
  y_ref, final_ref = pallas_kernels.ssd(**{k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()}, **kwargs)
  # ... then the outputs are equal and stay sharded.
  assert float(jnp.max(jnp.abs(y - y_ref))) <= ATOL
  assert float(jnp.max(jnp.abs(final_state - final_ref))) <= ATOL
  assert y.sharding.spec == _SSD_SPECS["x"]


def test_ssd_sharded_gradients_equal_unsharded(mesh):
  # Given 2 groups of 4 heads and 4 head shards: each shard's heads read half a group, so B and C are replicated
  # over "tensor" and each shard slices its group out (their gradients are summed over the shards) ...
  implementation = "pallas_gpu_interpret"
  inputs = _ssd_inputs(2)
  sharded = _put(inputs, mesh, _SSD_SPECS, P("data", None, None, None))
  local = {k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()}
  rng = np.random.default_rng(1)
  gy = jnp.asarray(rng.normal(size=inputs["x"].shape), jnp.float32)
  gs = jnp.asarray(rng.normal(size=inputs["initial_state"].shape), jnp.float32)
  # ... when the loss is differentiated through the sharded kernel (under jit: axes given) and the unsharded one ...
  grad_sharded = jax.jit(jax.grad(_ssd_loss(ssd_sharded, implementation, batch_axes="data", head_axes="tensor"),
                                  has_aux=True), compiler_options=_FAST_COMPILE)
  compiled = grad_sharded.lower(sharded, gy, gs).compile()
  grads, (y, final_state) = compiled(sharded, gy, gs)
  grads_ref, (y_ref, final_ref) = jax.jit(jax.grad(_ssd_loss(pallas_kernels.ssd, implementation), has_aux=True),
                                          compiler_options=_FAST_COMPILE)(local, gy, gs)
  # ... then outputs and the gradients of every input are equal, and the sharded program gathers nothing.
  assert "all-gather" not in compiled.as_text()
  assert float(jnp.max(jnp.abs(y - y_ref))) <= ATOL
  assert float(jnp.max(jnp.abs(final_state - final_ref))) <= ATOL
  for name, g_ref in grads_ref.items():
    assert float(jnp.max(jnp.abs(grads[name] - g_ref))) <= 1e-4 * float(jnp.max(jnp.abs(g_ref))), name


def test_ssd_sharded_tpu_interpret_forward(mesh):
  inputs = _ssd_inputs(4)
  sharded = _put(inputs, mesh, _SSD_SPECS, P("data", None, "tensor", None))
  kwargs = dict(chunk_size=CHUNK, dt_softplus=True, return_final_state=True, implementation="pallas_tpu_interpret")
  y, final_state = jax.jit(lambda a: ssd_sharded(**a, batch_axes="data", head_axes="tensor", **kwargs),
                           compiler_options=_FAST_COMPILE)(sharded)
  y_ref, final_ref = pallas_kernels.ssd(**{k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()},
                                        **{**kwargs, "implementation": "reference"})
  assert float(jnp.max(jnp.abs(y - y_ref))) <= ATOL
  assert float(jnp.max(jnp.abs(final_state - final_ref))) <= ATOL


def test_ssd_sharded_reads_axes_from_an_explicit_mesh(mesh):
  # Under jit on a mesh with explicit axes, the shardings of traced arrays are known: no axes need to be passed.
  explicit = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  inputs = _ssd_inputs(4)
  with jax.set_mesh(explicit):
    sharded = _put(inputs, explicit, _SSD_SPECS, P("data", None, "tensor", None))
    y = jax.jit(lambda a: ssd_sharded(**a, chunk_size=CHUNK, dt_softplus=True,
                                      implementation="pallas_gpu_interpret"), compiler_options=_FAST_COMPILE)(sharded)
  y_ref = pallas_kernels.ssd(**{k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()}, chunk_size=CHUNK,
                             dt_softplus=True, implementation="reference")
  assert float(jnp.max(jnp.abs(y - y_ref))) <= ATOL


def test_selective_scan_sharded_equals_unsharded(mesh):
  # Given u, delta, z sharded over batch and channels, B and C over batch only ...
  rng = np.random.default_rng(2)
  b, t, e, n = BATCH, SEQLEN, D_INNER, DSTATE
  inputs = dict(u=rng.normal(size=(b, t, e)), delta=rng.normal(-1.0, 1.0, size=(b, t, e)),
                A=-rng.uniform(0.5, 3.0, size=(e, n)), B=rng.normal(size=(b, t, n)), C=rng.normal(size=(b, t, n)),
                D=rng.normal(size=(e,)), z=rng.normal(size=(b, t, e)), delta_bias=rng.uniform(-0.5, 0.5, size=(e,)),
                initial_state=rng.normal(size=(b, e, n)))
  specs = dict(A=P("tensor", None), B=P("data"), C=P("data"), D=P("tensor"), delta_bias=P("tensor"),
               initial_state=P("data", "tensor", None))
  sharded = _put(inputs, mesh, specs, P("data", None, "tensor"))
  local = {k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()}
  gy = jnp.asarray(rng.normal(size=(b, t, e)), jnp.float32)
  gs = jnp.asarray(rng.normal(size=(b, e, n)), jnp.float32)
  implementation = "pallas_gpu_interpret"

  def loss(call, **sharding):
    def fn(arrays):
      a = dict(arrays)
      y, final_state = call(a.pop("u"), a.pop("delta"), a.pop("A"), a.pop("B"), a.pop("C"), **a,
                            delta_softplus=True, return_final_state=True, implementation=implementation, **sharding)
      return jnp.sum(y * gy) + jnp.sum(final_state * gs), (y, final_state)
    return fn

  # ... when the kernel runs on the shards and unsharded, then outputs and every gradient are equal ...
  grad_sharded = jax.jit(jax.grad(loss(selective_scan_sharded, batch_axes="data", channel_axes="tensor"),
                                  has_aux=True), compiler_options=_FAST_COMPILE)
  compiled = grad_sharded.lower(sharded).compile()
  # ... with no gather of the sharded inputs (the gradients of the replicated B and C are summed: a reduction).
  assert "all-gather" not in compiled.as_text()
  grads, (y, final_state) = compiled(sharded)
  grads_ref, (y_ref, final_ref) = jax.jit(jax.grad(loss(pallas_kernels.selective_scan), has_aux=True),
                                          compiler_options=_FAST_COMPILE)(local)
  assert float(jnp.max(jnp.abs(y - y_ref))) <= ATOL
  assert float(jnp.max(jnp.abs(final_state - final_ref))) <= ATOL
  for name, g_ref in grads_ref.items():
    assert float(jnp.max(jnp.abs(grads[name] - g_ref))) <= 1e-4 * float(jnp.max(jnp.abs(g_ref))), name


def test_axes_must_be_given_when_the_sharding_is_not_visible(mesh):
  x = jnp.zeros((BATCH, SEQLEN, NHEADS, HEADDIM))
  args = (x, jnp.ones(x.shape[:3]), -jnp.ones(NHEADS), jnp.zeros((BATCH, SEQLEN, 4, DSTATE)),
          jnp.zeros((BATCH, SEQLEN, 4, DSTATE)))
  with pytest.raises(ValueError, match=r"cannot read the sharding of x: pass batch_axes and head_axes"):
    jax.jit(lambda *a: ssd_sharded(*a, chunk_size=CHUNK, implementation="chunked"))(*args)


def test_sequence_sharding_is_rejected(mesh):
  x = jax.device_put(jnp.zeros((BATCH, 24, NHEADS, HEADDIM)), NamedSharding(mesh, P("data", "tensor", None, None)))
  args = (x, jnp.ones(x.shape[:3]), -jnp.ones(NHEADS), jnp.zeros((BATCH, 24, 4, DSTATE)),
          jnp.zeros((BATCH, 24, 4, DSTATE)))
  with pytest.raises(ValueError, match=r"x may be sharded over batch \(dim 0\) and head \(dim 2\) only"):
    ssd_sharded(*args, chunk_size=CHUNK, implementation="chunked")


def test_groups_that_split_unevenly_are_rejected(mesh):
  x = jax.device_put(jnp.zeros((BATCH, SEQLEN, 12, HEADDIM)), NamedSharding(mesh, P("data", None, "tensor", None)))
  args = (x, jnp.ones(x.shape[:3]), -jnp.ones(12), jnp.zeros((BATCH, SEQLEN, 3, DSTATE)),
          jnp.zeros((BATCH, SEQLEN, 3, DSTATE)))
  with pytest.raises(ValueError, match=r"ngroups = 3 and the 4 head shards .* must divide one another"):
    ssd_sharded(*args, chunk_size=CHUNK, implementation="chunked")
