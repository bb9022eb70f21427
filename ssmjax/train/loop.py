"""`train`: the library's training run, which ``train.py`` configures with gin and notebooks call directly.

  from ssmjax import presets
  from ssmjax.data import DataConfig
  from ssmjax.train import TrainConfig, train
  result = train(presets.get("tiny_hybrid"), DataConfig(tasks=("phonebook",)), TrainConfig(num_steps=100),
                 workdir="/tmp/run")

A run: check the configs against each other and the devices; build the mesh; open the data iterator and the
checkpoints; restore the newest checkpoint or initialise; then step, logging metrics, saving every N steps and on
SIGTERM (then returning with ``preempted=True``); at the end save a last checkpoint, export the parameters in the
model-checkpoint format (`ssmjax.checkpoint.save_model`) and score the model on phone-book lookup.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import signal
import threading
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from ssmjax import checkpoint as model_checkpoint
from ssmjax import data as data_lib
from ssmjax.config import ModelConfig
from ssmjax.models.lm import LanguageModel
from ssmjax.sharding import LENGTH, MESH_AXES, MeshConfig, batch_spec, make_mesh
from ssmjax.train import flops as flops_lib
from ssmjax.train import metrics as metrics_lib
from ssmjax.train.checkpointing import Checkpointer
from ssmjax.train import init_from as init_from_lib
from ssmjax.train.config import TrainConfig
from ssmjax.train.optim import make_optimizer
from ssmjax.train.state import TrainState, abstract_state, make_init_fn, state_shardings
from ssmjax.train.step import make_train_step

CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
DEFAULT_WORKDIR = "/tmp/ssmjax_train"


@dataclasses.dataclass
class TrainResult:
  step: int  # steps completed.
  state: TrainState | None  # the final state (None for compile-only runs).
  metrics: list[dict]  # the records logged by this call.
  checkpoint_dir: str | None = None
  model_dir: str | None = None  # the exported model (ssmjax.checkpoint.load_model), when exported.
  phonebook_accuracy: float | None = None
  preempted: bool = False  # stopped by SIGTERM after saving a checkpoint.
  compile_report: dict | None = None  # compile-only runs: ssmjax.train.aot.compile_train_step's report.
  start_step: int = 0  # the step this call resumed from (0: a fresh run).


@dataclasses.dataclass(frozen=True)
class RunFunctions:
  """What a run compiles, for a (model, optimizer, schedule length, accumulation, mesh, rules) combination."""

  optimizer: Any
  schedule: Any
  shardings: TrainState
  abstract_state: TrainState  # ShapeDtypeStructs with their shardings.
  batch_sharding: NamedSharding
  init: Callable[[int], TrainState]  # jitted: seed -> state.
  step: Callable[[TrainState, dict], tuple[TrainState, dict]]  # jitted, the state donated.


@functools.lru_cache(maxsize=8)
def run_functions(model: ModelConfig, optimizer_config, schedule_steps: int, accum_steps: int, mesh,
                  rules, loss_chunk_size: int = 0) -> RunFunctions:
  """The run's shardings and jitted init and step, cached so that calling `train` again with the same settings (a
  notebook, a resumed run in one process, tests) reuses the compiled executables."""
  optimizer, schedule = make_optimizer(optimizer_config, schedule_steps)
  shardings = state_shardings(model, optimizer, mesh, rules)
  abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    abstract_state(model, optimizer), shardings)
  batch_sharding = NamedSharding(mesh, batch_spec())
  step = jax.jit(make_train_step(LanguageModel(model), optimizer, schedule, accum_steps, loss_chunk_size),
                 in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None), donate_argnums=(0,))
  return RunFunctions(optimizer, schedule, shardings, abstract, batch_sharding, make_init_fn(model, optimizer,
                                                                                            shardings), step)


def check_run(model: ModelConfig, data: data_lib.DataConfig, config: TrainConfig, mesh_shape: tuple[int, ...],
              rules, process_count: int, check_data: bool = True) -> None:
  """Raise ValueError when the configs do not fit each other or the mesh (the message names the setting).

  ``check_data``: also validate the data config and load its tokenizer (compile-only runs skip it: they read none).
  """
  if check_data:
    data.validate()
    vocab = data_lib.data_vocab_size(data)
    if model.vocab_size < vocab:
      raise ValueError(f"ModelConfig.vocab_size ({model.vocab_size}) is smaller than the data's vocabulary ({vocab}, "
                       f"tokenizer {data.tokenizer!r})")
  axes = dict(zip(MESH_AXES, mesh_shape))
  batch, accum = data.global_batch_size, config.grad_accum_steps
  if batch % accum:
    raise ValueError(f"DataConfig.global_batch_size ({batch}) must be divisible by TrainConfig.grad_accum_steps "
                     f"({accum})")
  micro, batch_devices = batch // accum, axes["data"] * axes["fsdp"]
  if micro % batch_devices:
    raise ValueError(f"the micro-batch (global_batch_size {batch} / grad_accum_steps {accum} = {micro} rows) must be "
                     f"divisible by the batch axes of the mesh (data x fsdp = {axes['data']} x {axes['fsdp']})")
  if batch % process_count:
    raise ValueError(f"DataConfig.global_batch_size ({batch}) must be divisible by the process count "
                     f"({process_count})")
  length_axes = dict(rules).get(LENGTH)
  length_axes = () if length_axes is None else (length_axes if isinstance(length_axes, tuple) else (length_axes,))
  length_devices = math.prod(axes[a] for a in length_axes)
  if data.seq_len % length_devices:
    raise ValueError(f"DataConfig.seq_len ({data.seq_len}) must be divisible by the mesh axes {length_axes} "
                     f"({length_devices} devices) that the {LENGTH!r} rule shards sequences over")


class _SigtermFlag:
  """Set by SIGTERM (single process: a Python handler; several: jax's preemption sync point, so that every process
  stops at the same step)."""

  def __init__(self):
    self.raised = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.raised

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _global_batch(local: dict, sharding: NamedSharding, global_rows: int) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (global_rows, *np.shape(v)[1:]))
          for k, v in local.items()}


def _peak_flops(config: TrainConfig, devices) -> float | None:
  per_device = config.peak_flops_per_device or flops_lib.peak_flops_per_device(devices[0].device_kind)
  return per_device * len(devices) if per_device else None


def _export(state: TrainState, model: ModelConfig, workdir: str) -> str:
  directory = os.path.join(workdir, MODEL_DIR)
  if jax.process_index() == 0 and os.path.exists(directory):
    shutil.rmtree(directory)  # a previous export of this run (e.g. before a resume): replaced.
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("ssmjax_export_model")
  model_checkpoint.save_model(directory, model, state.params)
  return directory


def evaluate_phonebook(model: ModelConfig, params: Any, data: data_lib.DataConfig, mesh, num_examples: int,
                       batch_size: int) -> float:
  """Phone-book accuracy of ``params`` on books of the largest training size (teacher forced, every digit right)."""
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_size = -(-batch_size // batch_devices) * batch_devices
  in_sharding = NamedSharding(mesh, batch_spec(shard_length=False))  # book lengths need not split over context
  apply = jax.jit(lambda p, ids: LanguageModel(model).apply({"params": p}, ids),
                  out_shardings=NamedSharding(mesh, PartitionSpec()))

  def predict(inputs: np.ndarray) -> np.ndarray:
    ids = jax.make_array_from_callback(inputs.shape, in_sharding, lambda index: inputs[index])
    return np.asarray(apply(params, ids))

  return data_lib.phonebook_accuracy(predict, num_examples=num_examples, book_size=data.phonebook.max_book_size,
                                     seed=data.seed, task=data.phonebook, tokenizer=data.tokenizer,
                                     batch_size=batch_size)


def train(model: ModelConfig, data: data_lib.DataConfig, config: TrainConfig = TrainConfig(),
          mesh: MeshConfig = MeshConfig(), workdir: str = DEFAULT_WORKDIR, compile_only: str | None = None,
          on_first_step: Callable[[str], None] | None = None, devices: Sequence[Any] | None = None) -> TrainResult:
  """Trains ``model`` on ``data`` in ``workdir`` (resuming from its checkpoints); see the module docstring.

  ``compile_only``: a TPU topology such as ``"v5p:4x4x4"``: only compile the train step for that slice ahead of
  time and return XLA's memory and cost analysis (`ssmjax.train.aot`). ``on_first_step(workdir)`` is called by
  process 0 once the first step has run (``train.py`` writes gin's operative config there). ``devices``: the devices
  of the mesh (default: all devices of all processes).
  """
  if compile_only:
    from ssmjax.train import aot  # needs libtpu; imported only when asked for.

    report = aot.compile_train_step(model, data, config, mesh, compile_only)
    return TrainResult(step=0, state=None, metrics=[], compile_report=report)

  devices = list(jax.devices() if devices is None else devices)
  mesh_obj = make_mesh(mesh, devices)
  rules = mesh.resolved_rules()
  check_run(model, data, config, tuple(mesh_obj.shape.values()), rules, jax.process_count())
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  iterator = data_lib.make_train_iterator(data, process_index=jax.process_index(),
                                          process_count=jax.process_count())
  fns = run_functions(model, config.optimizer, config.optimizer.decay_steps or config.num_steps,
                      config.grad_accum_steps, mesh_obj, rules, config.loss_chunk_size)
  # jax.set_mesh, not `with mesh_obj:`: flax's logical constraints act only under an abstract mesh, which jax 0.10's
  # `with mesh:` no longer sets (BENCHMARKS.md, Training: why FSDP asked for 716 GiB per chip).
  with jax.set_mesh(mesh_obj), nn.logical_axis_rules(list(rules)):
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), config.checkpoint)
    restored = checkpointer.restore(fns.abstract_state, iterator)
    if restored is None:
      state, start = fns.init(config.seed), 0
      if config.init_from:
        state = state.replace(params=init_from_lib.load_params(config.init_from, model, fns.shardings.params))
        logging.info("initialised the parameters from %s", config.init_from)
    else:
      state, start = restored
      logging.info("resumed from step %d of %s", start, checkpointer.directory)
    batch_sharding, step_fn = fns.batch_sharding, fns.step

    tokens_per_step = data.global_batch_size * data.seq_len
    throughput = metrics_lib.Throughput(tokens_per_step, flops_lib.flops_per_token(model, data.seq_len)["train"],
                                        _peak_flops(config, devices))
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main, tensorboard=config.tensorboard)
    bar = metrics_lib.ProgressBar(config.num_steps, start, enabled=is_main and config.progress_bar)
    sigterm = _SigtermFlag()
    records, preempted, step = [], False, start
    try:
      while step < config.num_steps:
        batch = _global_batch(next(iterator), batch_sharding, data.global_batch_size)
        state, step_metrics = step_fn(state, batch)
        step += 1
        if step == start + 1 and is_main and on_first_step is not None:
          on_first_step(workdir)
        if step % config.log_every == 0 or step == config.num_steps or step == start + 1:
          record = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          record.update(throughput.update(step))
          writer.write(step, record)
          records.append({"step": step, **record})
          bar.update(step, record)
        checkpointer.save(step, state, iterator)
        if sigterm.reached(step):
          checkpointer.save(step, state, iterator, force=True)
          preempted = True
          logging.warning("SIGTERM: saved step %d to %s; stopping", step, checkpointer.directory)
          break
      if not preempted:
        checkpointer.save(step, state, iterator, force=True)
    finally:
      checkpointer.close()  # waits for the last asynchronous save.
      sigterm.restore()
      bar.close()
      writer.close()
      iterator.close()

    result = TrainResult(step=step, state=state, metrics=records, checkpoint_dir=checkpointer.directory,
                         preempted=preempted, start_step=start)
    if preempted:
      return result
    if config.export_model:
      result.model_dir = _export(state, model, workdir)
    if config.eval_examples and "phonebook" in data.tasks and data.source == "synthetic":
      result.phonebook_accuracy = evaluate_phonebook(model, state.params, data, mesh_obj, config.eval_examples,
                                                     config.eval_batch_size)
    return result
