"""Throughput of the jitted train step (forward, backward, AdamW update): tokens/s and MFU on the current backend.

  python benchmarks/train_step.py                               # tiny (the default experiment's model) and 130m
  python benchmarks/train_step.py --configs=130m --seq_len=1024 --batch=4 --dtype=bfloat16

Configs: ``tiny`` is the model of configs/experiments/cpu_tiny_hybrid_phonebook.gin; ``130m`` is the shape of
state-spaces' mamba2-130m (24 Mamba-2 layers, d_model 768, vocab 50,288, tied embeddings). MFU is model FLOPs
(`ssmjax.train.flops`, 3x forward) per second over the devices' peak: the spec-sheet bf16 peak on TPUs and GPUs; on
CPUs, which have none, the float32 matmul throughput measured here (a 2048^3 matmul, best of 5) stands in for it.
Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

_CONFIGS = flags.DEFINE_list("configs", ["tiny", "130m"], "Which configs: tiny, 130m.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Sequence length (default: 128 for tiny, 512 for 130m).")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: 16 for tiny, 2 for 130m).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype (parameters stay float32).")
_REMAT = flags.DEFINE_string("remat", "none", "Remat policy: none, full, dots, dots_no_batch.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")


def _configs():
  from ssmjax import gin_utils, presets

  tiny = gin_utils.model_config_from_gin(["experiments/cpu_tiny_hybrid_phonebook.gin"])
  return {"tiny": (tiny, 128, 16), "130m": (presets.get("mamba2_130m"), 512, 2)}  # tiny: the experiment's batch


def measured_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def bench(name, model, seq_len, batch, steps):
  import jax
  import numpy as np

  from ssmjax.sharding import MeshConfig, make_mesh
  from ssmjax.train import OptimizerConfig, flops
  from ssmjax.train.loop import run_functions

  mesh_config = MeshConfig()
  mesh = make_mesh(mesh_config)
  fns = run_functions(model, OptimizerConfig(warmup_steps=10), 1000, 1, mesh, mesh_config.resolved_rules())
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, model.vocab_size, (batch, seq_len + 1)).astype(np.int32)
  batch_arrays = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                 "loss_mask": np.ones((batch, seq_len), np.float32)}, fns.batch_sharding)
  import flax.linen as nn

  with jax.set_mesh(mesh), nn.logical_axis_rules(list(mesh_config.resolved_rules())):
    start = time.perf_counter()
    state = fns.init(0)
    state, metrics = fns.step(state, batch_arrays)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, metrics = fns.step(state, batch_arrays)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = fns.step(state, batch_arrays)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - start
  tokens_per_s = batch * seq_len * steps / elapsed
  devices = jax.devices()
  peak = flops.peak_flops_per_device(devices[0].device_kind)
  peak_source = "spec sheet"
  if peak is None:
    peak, peak_source = measured_matmul_flops(), "measured f32 matmul"
  model_flops = flops.flops_per_token(model, seq_len)["train"] * tokens_per_s
  return {"config": name, "params": int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))),
          "seq_len": seq_len, "batch": batch, "dtype": model.dtype, "remat": model.remat_policy,
          "backend": devices[0].platform, "device_kind": devices[0].device_kind, "devices": len(devices),
          "first_step_s": compile_s, "step_ms": 1000 * elapsed / steps, "tokens_per_s": tokens_per_s,
          "model_tflops_per_s": model_flops / 1e12, "peak_tflops": peak * len(devices) / 1e12,
          "peak_source": peak_source, "mfu": model_flops / (peak * len(devices))}


def main(argv):
  del argv
  configs = _configs()
  rows = []
  for name in _CONFIGS.value:
    model, seq_len, batch = configs[name]
    model = model.replace(dtype=_DTYPE.value, remat_policy=_REMAT.value)
    rows.append(bench(name, model, _SEQ_LEN.value or seq_len, _BATCH.value or batch, _STEPS.value))
  header = f"{'config':<7}{'params':>13}{'batch x T':>11}{'dtype':>10}{'step ms':>10}{'tokens/s':>11}" \
           f"{'TFLOP/s':>9}{'MFU':>8}  backend"
  print(header)
  for r in rows:
    print(f"{r['config']:<7}{r['params']:>13,}{r['batch']:>5} x {r['seq_len']:<4}{r['dtype']:>10}{r['step_ms']:>10.1f}"
          f"{r['tokens_per_s']:>11,.0f}{r['model_tflops_per_s']:>9.4f}{100 * r['mfu']:>7.1f}%  {r['backend']} "
          f"({r['devices']} x {r['device_kind']}; peak {r['peak_tflops']:.3g} TFLOP/s, {r['peak_source']})")
  print(json.dumps(rows))


if __name__ == "__main__":
  app.run(main)
