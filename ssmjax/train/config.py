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
  # Output layer + cross-entropy over chunks of this many positions (ssmjax.models.loss), so that the (batch, length,
  # vocab) logits are never whole; 0: unchunked. Same loss and gradients up to float32 summation order.
  loss_chunk_size: int = 0
  # Continued pretraining / fine-tuning: a fresh run (no checkpoint in its workdir yet) takes its parameters from here,
  # with a new optimizer state and step 0: an ssmjax model directory (model_config.json + params/, e.g. a run's
  # <workdir>/model or `python -m ssmjax.convert` output), or a training run's workdir or checkpoints directory (its
  # newest checkpoint's parameters). The shapes must equal the model's; other settings (dtype, RoPE base, remat) may
  # differ. A run that has checkpoints of its own resumes from them instead. None: initialise from TrainConfig.seed.
  init_from: str | None = None

  def __post_init__(self):
    for name in ("num_steps", "grad_accum_steps", "log_every", "eval_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.loss_chunk_size < 0:
      raise ValueError(f"TrainConfig.loss_chunk_size must be >= 0 (0: unchunked), got {self.loss_chunk_size}")
    if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
      raise ValueError(f"TrainConfig.init_from must be a non-empty path or None, got {self.init_from!r}")
    if self.eval_examples < 0:
      raise ValueError(f"TrainConfig.eval_examples must be >= 0, got {self.eval_examples}")
