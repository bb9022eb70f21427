"""`TrainConfig`: how long to train and how (optimizer, accumulation, checkpoints, logging, evaluation)."""

from __future__ import annotations

import dataclasses

from ssmjax.train.checkpointing import CheckpointConfig
from ssmjax.train.optim import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A run's training settings; the model, data and mesh have their own configs (`ssmjax.train.train`)."""

  num_steps: int = 1000  # optimizer steps (each consumes one global batch of DataConfig.global_batch_size rows).
  seed: int = 0  # parameter init and the step RNG; data order has its own seed (DataConfig.seed).
  grad_accum_steps: int = 1  # micro-batches per step: the global batch is split in this many, gradients summed.
  optimizer: OptimizerConfig = OptimizerConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  log_every: int = 10  # steps between metric records (and progress-bar updates).
  progress_bar: bool = True
  tensorboard: bool = True
  # Phone-book evaluation of the trained model (teacher-forced answers; ssmjax.data.phonebook_accuracy) on
  # eval_examples books of DataConfig.phonebook.max_book_size entries; 0 skips it.
  eval_examples: int = 128
  eval_batch_size: int = 16
  export_model: bool = True  # write <workdir>/model (ssmjax.checkpoint format) at the end.
  peak_flops_per_device: float | None = None  # for MFU; None: the spec-sheet value of the device kind, if known.

  def __post_init__(self):
    for name in ("num_steps", "grad_accum_steps", "log_every", "eval_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.eval_examples < 0:
      raise ValueError(f"TrainConfig.eval_examples must be >= 0, got {self.eval_examples}")
