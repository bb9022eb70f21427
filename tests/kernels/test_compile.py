"""The kernels compile for the hardware they are written for, from this CPU-only machine.

TPU: with libtpu installed (`jax[tpu]`, in the `test` extra), `jax.experimental.topologies.get_topology_desc` describes
a TPU slice without any TPU attached, and `jit(...).lower(...).compile()` runs the real XLA:TPU and Mosaic compilers
for it. The forward and backward kernels of both ops are compiled inside `shard_map` (through
`pallas_kernels.sharding`, batch over "data" and heads / channels over "tensor") at the shapes of the paper's layers,
so a kernel that Mosaic rejects (an unsupported op, a bad tile shape, too much VMEM) fails here rather than on a pod.

GPU: without a GPU, the Pallas Triton lowering still runs (`lower(lowering_platforms=("cuda",))` turns the kernels
into Triton IR), which checks every op and tile shape against Triton's rules (power-of-two tiles, supported
primitives). Compiling that IR to PTX needs the CUDA toolchain of a GPU machine and is not done here.
"""

from __future__ import annotations

import os

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pallas_kernels
from pallas_kernels.sharding import selective_scan_sharded, ssd_sharded

TOPOLOGIES = ["v5e:2x2", "v5p:2x2x1", "v6e:2x2"]


def _ssd_args(make, batch, seqlen, nheads, headdim, ngroups, dstate, dtype):
  """(x, dt, A, B, C, D, z, initial_state) built by `make(name, shape, dtype, spec)`."""
  return (make("x", (batch, seqlen, nheads, headdim), dtype, P("data", None, "tensor", None)),
          make("dt", (batch, seqlen, nheads), jnp.float32, P("data", None, "tensor")),
          make("A", (nheads,), jnp.float32, P("tensor")),
          make("B", (batch, seqlen, ngroups, dstate), dtype, P("data", None, "tensor", None)),
          make("C", (batch, seqlen, ngroups, dstate), dtype, P("data", None, "tensor", None)),
          make("D", (nheads,), jnp.float32, P("tensor")),
          make("z", (batch, seqlen, nheads, headdim), dtype, P("data", None, "tensor", None)),
          make("initial_state", (batch, nheads, headdim, dstate), jnp.float32, P("data", "tensor", None, None)))


def _scan_args(make, batch, seqlen, d_inner, dstate, dtype):
  """(u, delta, A, B, C, D, z, delta_bias, initial_state) built by `make(name, shape, dtype, spec)`."""
  return (make("u", (batch, seqlen, d_inner), dtype, P("data", None, "tensor")),
          make("delta", (batch, seqlen, d_inner), dtype, P("data", None, "tensor")),
          make("A", (d_inner, dstate), jnp.float32, P("tensor", None)),
          make("B", (batch, seqlen, dstate), dtype, P("data", None, None)),
          make("C", (batch, seqlen, dstate), dtype, P("data", None, None)),
          make("D", (d_inner,), jnp.float32, P("tensor")),
          make("z", (batch, seqlen, d_inner), dtype, P("data", None, "tensor")),
          make("delta_bias", (d_inner,), jnp.float32, P("tensor")),
          make("initial_state", (batch, d_inner, dstate), jnp.float32, P("data", "tensor", None)))


def _ssd_loss(implementation, chunk_size, **sharding):
  def loss(x, dt, A, B, C, D, z, initial_state):
    call = ssd_sharded if sharding else pallas_kernels.ssd
    y, final_state = call(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, initial_state=initial_state,
                          return_final_state=True, implementation=implementation, **sharding)
    return jnp.sum(y.astype(jnp.float32)) + jnp.sum(final_state)

  return loss


def _scan_loss(implementation, **sharding):
  def loss(u, delta, A, B, C, D, z, delta_bias, initial_state):
    call = selective_scan_sharded if sharding else pallas_kernels.selective_scan
    y, final_state = call(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True,
                          initial_state=initial_state, return_final_state=True, implementation=implementation,
                          **sharding)
    return jnp.sum(y.astype(jnp.float32)) + jnp.sum(final_state)

  return loss


def _forward_and_backward(loss, nargs):
  """The gradient of `loss` w.r.t. every argument: compiling it compiles the forward and the backward kernels."""
  return jax.jit(jax.grad(loss, argnums=tuple(range(nargs))))


@pytest.mark.tpu
@pytest.mark.parametrize("topology", TOPOLOGIES)
class TestTpuAheadOfTimeCompile:
  """Per topology, bf16, tensor-parallel over 2 chips, with the kernels' block shapes of the paper's layers:

  SSD: the 8B hybrid's Mamba-2 layer has 128 heads of 64 in 8 groups (16 heads per group), d_state 128, chunk 128.
  32 heads in 2 groups keep 16 heads per group, hence the same [8 heads, 128, 64] blocks, while keeping the XLA
  program around the kernels (whose compile time grows with the array sizes) small; 256 steps are 2 chunks.
  Selective scan: a mamba-2.8b layer (d_inner 5120, d_state 16) on 512 steps.
  """

  @pytest.fixture
  def mesh(self, topology):
    pytest.importorskip("libtpu", reason="TPU ahead-of-time compilation needs libtpu (pip install 'jax[tpu]')")
    # libtpu takes a machine-wide lock file (/tmp/libtpu_lockfile) unless told that several processes may load it:
    # without this, a second test process on the machine (or pytest-xdist) fails to create the topology.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    return jax.sharding.Mesh(np.array(devices).reshape(2, 2), ("data", "tensor"))

  def _compile(self, fn, args):
    compiled = fn.lower(*args).compile()
    text = compiled.as_text()
    assert text.count("tpu_custom_call") >= 2, "expected the forward and the backward Mosaic kernels"
    assert "all-gather" not in text, "the kernels must run on their shards without gathering the inputs"

  def test_ssd_forward_and_backward_compile(self, mesh):
    make = lambda name, shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
    args = _ssd_args(make, batch=2, seqlen=256, nheads=32, headdim=64, ngroups=2, dstate=128, dtype=jnp.bfloat16)
    loss = _ssd_loss("pallas_tpu", 128, mesh=mesh, batch_axes="data", head_axes="tensor")
    self._compile(_forward_and_backward(loss, len(args)), args)

  @pytest.mark.slow
  def test_ssd_state_spaces_shapes_compile(self, mesh):
    # mamba2-130m / 2.7b: one group (24 / 80 heads), chunk 256: the largest [Q, Q] blocks at 8 heads per step.
    make = lambda name, shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
    args = _ssd_args(make, batch=2, seqlen=512, nheads=48, headdim=64, ngroups=2, dstate=128, dtype=jnp.bfloat16)
    loss = _ssd_loss("pallas_tpu", 256, mesh=mesh, batch_axes="data", head_axes="tensor")
    self._compile(_forward_and_backward(loss, len(args)), args)

  def test_selective_scan_forward_and_backward_compile(self, mesh):
    make = lambda name, shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
    args = _scan_args(make, batch=2, seqlen=512, d_inner=5120, dstate=16, dtype=jnp.bfloat16)
    loss = _scan_loss("pallas_tpu", mesh=mesh, batch_axes="data", channel_axes="tensor")
    self._compile(_forward_and_backward(loss, len(args)), args)


def _triton_calls(fn, args) -> int:
  text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  return text.count("xla.gpu.triton")


# (id, ssd shape: batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size, dtype)
SSD_GPU_SHAPES = [
    ("hybrid8b-layer", (1, 512, 128, 64, 8, 128, 128, jnp.bfloat16)),
    ("mamba2-130m-layer", (1, 512, 24, 64, 1, 128, 256, jnp.bfloat16)),
    ("tiny-odd", (2, 37, 4, 3, 2, 5, 8, jnp.float32)),  # P, N and Q padded to Triton's power-of-two tiles
]
SCAN_GPU_SHAPES = [("mamba-2.8b-layer", (1, 512, 5120, 16, jnp.bfloat16)), ("tiny-odd", (2, 37, 6, 5, jnp.float32))]


@pytest.mark.parametrize("shape", [s for _, s in SSD_GPU_SHAPES], ids=[i for i, _ in SSD_GPU_SHAPES])
def test_ssd_gpu_kernels_lower_to_triton(shape):
  batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size, dtype = shape
  make = lambda name, shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype)
  args = _ssd_args(make, batch, seqlen, nheads, headdim, ngroups, dstate, dtype)
  assert _triton_calls(_forward_and_backward(_ssd_loss("pallas_gpu", chunk_size), len(args)), args) == 2


@pytest.mark.parametrize("shape", [s for _, s in SCAN_GPU_SHAPES], ids=[i for i, _ in SCAN_GPU_SHAPES])
def test_selective_scan_gpu_kernels_lower_to_triton(shape):
  batch, seqlen, d_inner, dstate, dtype = shape
  make = lambda name, shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype)
  args = _scan_args(make, batch, seqlen, d_inner, dstate, dtype)
  assert _triton_calls(_forward_and_backward(_scan_loss("pallas_gpu"), len(args)), args) == 2
