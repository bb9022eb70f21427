"""Ahead-of-time compilation of the train step for a TPU slice, on a machine without one.

``jax.experimental.topologies.get_topology_desc("v5p:4x4x4", "tpu")`` describes a slice's devices (libtpu, from
the ``tpu`` extra, does the compiling; no TPU is needed). The train step is lowered with the run's real shardings on
a mesh of those devices and compiled; XLA's per-device memory analysis (arguments, outputs, temporaries, and the
aliasing that donating the state saves) says whether the run fits in HBM, and its cost analysis gives the FLOPs and
bytes per step of one device. ``python train.py --compile_only --topology=v5p:4x4x4 --gin_file=...`` prints it.
"""

from __future__ import annotations

import dataclasses
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import topologies

from ssmjax import data as data_lib
from ssmjax.config import ModelConfig
from ssmjax.sharding import MeshConfig, make_mesh
from ssmjax.train import flops as flops_lib
from ssmjax.train.config import TrainConfig

GIB = 2**30


def topology_devices(topology: str) -> list:
  """The devices of a TPU slice such as ``"v5e:2x2"`` or ``"v5p:4x4x4"`` (needs libtpu; no TPU).

  Compiling uses no TPU, so libtpu's one-process-per-machine lock is waived (``ALLOW_MULTIPLE_LIBTPU_LOAD``), which
  lets several compile-only processes (or tests) run at once.
  """
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    description = topologies.get_topology_desc(topology, platform="tpu")
  except Exception as e:  # pylint: disable=broad-except  # libtpu missing, or a name it does not know.
    raise ValueError(f"cannot describe TPU topology {topology!r} (expected e.g. 'v5e:2x2' or 'v5p:4x4x4'; needs "
                     f"libtpu: pip install -e '.[tpu]'): {type(e).__name__}: {e}") from e
  return list(description.devices)


def with_tpu_kernels(model: ModelConfig) -> ModelConfig:
  """`model` with the scans a TPU backend picks by default (``implementation=None`` is "pallas" there): the Mosaic
  kernels. Compiling from a CPU host, None would pick the jnp scans; an explicit choice is kept."""
  updates = {}
  for field in ("mamba1", "mamba2"):
    mixer = getattr(model, field)
    if mixer is not None and mixer.implementation is None:
      updates[field] = dataclasses.replace(mixer, implementation="pallas_tpu")
  return model.replace(**updates) if updates else model


def compile_train_step(model: ModelConfig, data: data_lib.DataConfig, config: TrainConfig, mesh: MeshConfig,
                       topology: str) -> dict:
  """Compiles the train step for ``topology`` and returns a report (sizes in bytes, FLOPs per device per step)."""
  from ssmjax.train.loop import check_run, run_functions  # loop imports this module lazily (no import cycle).

  devices = topology_devices(topology)
  model = with_tpu_kernels(model)
  mesh_obj = make_mesh(mesh, devices)
  rules = mesh.resolved_rules()
  processes = len({d.process_index for d in devices})
  check_run(model, data, config, tuple(mesh_obj.shape.values()), rules, processes, check_data=False)
  fns = run_functions(model, config.optimizer, config.optimizer.decay_steps or config.num_steps,
                      config.grad_accum_steps, mesh_obj, rules, config.loss_chunk_size)
  with jax.set_mesh(mesh_obj), nn.logical_axis_rules(list(rules)):
    shape = (data.global_batch_size, data.seq_len)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=fns.batch_sharding),
             "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=fns.batch_sharding),
             "loss_mask": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=fns.batch_sharding)}
    start = time.perf_counter()
    lowered = fns.step.lower(fns.abstract_state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  sizes = {name: int(getattr(memory, f"{name}_size_in_bytes")) for name in
           ("argument", "output", "alias", "temp", "generated_code")}
  # Live at once: inputs, outputs not aliased to inputs (donated state), temporaries, code.
  peak = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"] + sizes["generated_code"]
  model_flops = flops_lib.flops_per_token(model, data.seq_len)["train"] * data.global_batch_size * data.seq_len
  return {
      "topology": topology, "device_kind": devices[0].device_kind, "num_devices": len(devices),
      "num_hosts": processes, "mesh": dict(mesh_obj.shape), "global_batch_size": data.global_batch_size,
      "seq_len": data.seq_len, "grad_accum_steps": config.grad_accum_steps, "compile_seconds": compile_s,
      "mosaic_kernel_calls": lowered.as_text().count("tpu_custom_call"),  # Pallas kernels in the program
      "memory_per_device": {**sizes, "peak_estimate": peak},
      "cost_per_device": {"flops": float(cost.get("flops", float("nan"))),
                          "bytes_accessed": float(cost.get("bytes accessed", float("nan")))},
      "model_flops_per_device": model_flops / len(devices),
  }


def format_report(report: dict) -> str:
  """The report as the lines ``train.py --compile_only`` prints."""
  memory, cost = report["memory_per_device"], report["cost_per_device"]
  mesh = ", ".join(f"{k}={v}" for k, v in report["mesh"].items())
  lines = [f"compiled the train step for {report['topology']} ({report['num_devices']} x {report['device_kind']}, "
           f"{report['num_hosts']} hosts) in {report['compile_seconds']:.1f}s; mesh ({mesh}), global batch "
           f"{report['global_batch_size']} x {report['seq_len']} tokens, {report['grad_accum_steps']} micro-batch(es), "
           f"{report['mosaic_kernel_calls']} Pallas (Mosaic) kernel calls",
           "memory per device (XLA memory analysis):"]
  for name in ("argument", "output", "alias", "temp", "generated_code", "peak_estimate"):
    lines.append(f"  {name:<16}{memory[name] / GIB:10.3f} GiB")
  lines.append("cost per device per step (XLA cost analysis):")
  lines.append(f"  flops           {cost['flops']:.4g}   (model FLOPs: {report['model_flops_per_device']:.4g})")
  lines.append(f"  bytes accessed  {cost['bytes_accessed']:.4g}")
  return "\n".join(lines)
