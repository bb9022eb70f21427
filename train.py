"""The main job: train a model configured by gin files (``ssmjax.train.train``), on one machine or many.

  python train.py                                    # the default experiment: a tiny Mamba-2-Hybrid learns the
                                                     # phone-book task on the CPU in a few minutes
  python train.py --gin_file=experiments/cpu_tiny_mamba2_mqar.gin --workdir=/tmp/mqar
  python train.py --gin_file=experiments/mamba2_hybrid_8b.gin --gin.NUM_STEPS=1000 --workdir=gs://...
  python train.py --gin_file=experiments/mamba2_hybrid_8b.gin --compile_only --topology=v5p:2x2x2

Gin files are looked up relative to ``configs/`` (then the working directory); ``--gin_bindings`` and the shorthand
``--gin.NAME=VALUE`` (= ``--gin_bindings='NAME = VALUE'``) come after them. A run resumes from the checkpoints in
``--workdir``. Several processes (one per host): ``--coordinator_address=host:port --num_processes=N
--process_id=I``, or nothing on SLURM and Open MPI jobs (detected), or ``--distributed=on`` on TPU pods.
"""

from __future__ import annotations

import os
import tempfile

from absl import app, flags, logging

DEFAULT_GIN_FILE = "experiments/cpu_tiny_hybrid_phonebook.gin"
EXIT_PREEMPTED = 143  # 128 + SIGTERM, the usual status of a job ended by SIGTERM.

_GIN_FILES = flags.DEFINE_multi_string("gin_file", None, f"Gin files, in order (default: {DEFAULT_GIN_FILE}).")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings applied after the files, e.g. "
                                          "'NUM_STEPS = 100'. --gin.NAME=VALUE is a shorthand.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ssmjax_train", "Run directory: checkpoints, metrics, config, model.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Only compile the train step ahead of time for --topology "
                                  "and print XLA's memory and cost analysis.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice for --compile_only, e.g. v5e:2x2 or v5p:4x4x4.")
_CACHE_DIR = flags.DEFINE_string("compilation_cache_dir", os.path.join(tempfile.gettempdir(), "ssmjax_jax_cache"),
                                 "JAX's persistent compilation cache: a second run of the same config skips XLA "
                                 "compilation. Empty: off.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "Start jax.distributed: auto (with "
                                 "--coordinator_address or on a detected SLURM / MPI job), on, off.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def expand_gin_shorthand(argv: list[str]) -> list[str]:
  """``--gin.NAME=VALUE`` -> ``--gin_bindings=NAME = VALUE`` (absl cannot declare flags with free names)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    elif arg.startswith("--gin."):
      raise app.UsageError(f"{arg}: the gin shorthand needs a value, --gin.NAME=VALUE")
    else:
      out.append(arg)
  return out


def _parse_flags(argv: list[str]):
  return flags.FLAGS(expand_gin_shorthand(argv))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _COMPILE_ONLY.value and not _TOPOLOGY.value:
    raise app.UsageError("--compile_only needs --topology, e.g. --topology=v5p:4x4x4")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and jax log a lot at INFO; -v 0 shows it.
  from ssmjax.train import distributed  # after flag parsing: importing jax is slow, --help should not wait.

  distributed.initialize(distributed.DistributedConfig(
      mode=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value))
  import jax

  if _CACHE_DIR.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR.value)
  from ssmjax import gin_utils
  from ssmjax.train import aot

  gin_utils.parse(_GIN_FILES.value or [DEFAULT_GIN_FILE], _GIN_BINDINGS.value)
  run = gin_utils.configured_train()
  is_main = jax.process_index() == 0
  result = run(workdir=_WORKDIR.value, compile_only=_TOPOLOGY.value if _COMPILE_ONLY.value else None,
               on_first_step=gin_utils.write_operative_config)
  if not is_main:
    return 0 if not result.preempted else EXIT_PREEMPTED
  if result.compile_report is not None:
    print(aot.format_report(result.compile_report))
    return 0
  if result.preempted:
    print(f"stopped by SIGTERM at step {result.step}; checkpoint saved in {result.checkpoint_dir}; run the same "
          "command again to resume")
    return EXIT_PREEMPTED
  if result.start_step:
    print(f"resumed from the checkpoint of step {result.start_step} in {result.checkpoint_dir}")
  if result.metrics:
    first, last = result.metrics[0], result.metrics[-1]
    print(f"trained {result.step} steps: loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} "
          f"(step {last['step']})")
  if result.phonebook_accuracy is not None:
    print(f"phone-book accuracy of the trained model: {100 * result.phonebook_accuracy:.1f}% of queries answered "
          "exactly (teacher-forced, held-out books of the largest training size)")
  print(f"train checkpoints: {result.checkpoint_dir}")
  if result.model_dir:
    print(f"model (ssmjax.checkpoint.load_model): {result.model_dir}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
