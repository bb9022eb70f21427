"""Per-device memory of the context-parallel ops: forward + backward compiled with the sequence split over n devices.

For each op and sequence length, the loss gradient of the op is compiled (not run) on a mesh whose ``context`` axis
has n devices (n = 1 is the unsharded op on one device) and XLA's memory analysis gives the per-device bytes of
arguments and temporaries. Ops: the SSD of one Mamba-2 layer of the 8B hybrid (128 heads x 64, 8 groups, d_state
128, chunk 128; jnp "chunked"), and causal attention of one of its attention layers (32 query heads, 8 kv heads, head
dim 128; n = 1: `attention_reference`, n > 1: ring attention with 512 x 512 tiles). float32, batch 1. Prints a table
and one JSON line.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python benchmarks/context_parallel.py
  ... --lengths=16384,65536 --contexts=1,8
"""

from __future__ import annotations

import json
import time

from absl import app, flags

_LENGTHS = flags.DEFINE_list("lengths", ["8192", "32768"], "Sequence lengths.")
_CONTEXTS = flags.DEFINE_list("contexts", ["1", "8"], "Context-axis sizes (1: unsharded, one device).")
_OPS = flags.DEFINE_list("ops", ["ssd", "attention"], "Ops: ssd, attention.")


def _compile_stats(op: str, length: int, context: int) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from pallas_kernels import ssd
  from pallas_kernels.ssd.context_parallel import ssd_context_parallel
  from ssmjax import context_parallel
  from ssmjax.mixers.attention import attention_reference
  from ssmjax.sharding import DEFAULT_RULES, MESH_AXES

  f32 = jnp.float32
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:context]).reshape(1, 1, context, 1), MESH_AXES)
  if op == "ssd":
    heads, headdim, groups, dstate = 128, 64, 8, 128
    args = (jax.ShapeDtypeStruct((1, length, heads, headdim), f32), jax.ShapeDtypeStruct((1, length, heads), f32),
            jax.ShapeDtypeStruct((heads,), f32), jax.ShapeDtypeStruct((1, length, groups, dstate), f32),
            jax.ShapeDtypeStruct((1, length, groups, dstate), f32))

    def fn(*a):
      if context == 1:
        return ssd(*a, chunk_size=128, implementation="chunked")
      return ssd_context_parallel(*a, chunk_size=128, mesh=mesh, context_axes="context", implementation="chunked")
  elif op == "attention":
    args = (jax.ShapeDtypeStruct((1, length, 32, 128), f32), jax.ShapeDtypeStruct((1, length, 8, 128), f32),
            jax.ShapeDtypeStruct((1, length, 8, 128), f32))

    def fn(*a):
      if context == 1:
        return attention_reference(*a)
      return context_parallel.causal_attention(*a, context_parallel.context_layout(length))
  else:
    raise ValueError(f"unknown op {op!r}")
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args)))))
  start = time.perf_counter()
  with mesh, nn.logical_axis_rules(list(DEFAULT_RULES)):
    compiled = grad.lower(*args).compile()
  memory = compiled.memory_analysis()
  return {"op": op, "length": length, "context": context, "compile_s": round(time.perf_counter() - start, 1),
          "argument_mib": memory.argument_size_in_bytes / 2**20,
          "temp_mib_per_device": memory.temp_size_in_bytes / 2**20}


def main(argv):
  del argv
  rows = [_compile_stats(op, int(length), int(context)) for op in _OPS.value for length in _LENGTHS.value
          for context in _CONTEXTS.value]
  print(f"{'op':<10}{'length':>8}{'context':>8}{'args MiB/dev':>14}{'temp MiB/dev':>14}{'compile s':>11}")
  for r in rows:
    print(f"{r['op']:<10}{r['length']:>8}{r['context']:>8}{r['argument_mib']:>14.1f}{r['temp_mib_per_device']:>14.1f}"
          f"{r['compile_s']:>11.1f}")
  print(json.dumps(rows))


if __name__ == "__main__":
  app.run(main)
