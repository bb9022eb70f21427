"""Training: ``train(model, data, config, mesh, workdir)`` and its parts.

  config.py         TrainConfig (steps, accumulation, logging, evaluation; nests the two below)
  optim.py          OptimizerConfig, AdamW with masked weight decay, Megatron cosine / WSD schedules
  checkpointing.py  CheckpointConfig, Checkpointer (orbax CheckpointManager + grain iterator state)
  state.py          TrainState, its shardings from the logical axis rules, sharded initialisation
  step.py           the jitted train step (masked cross-entropy, optionally chunked; gradient accumulation by scan)
  init_from.py      TrainConfig.init_from: a run's parameters from a model directory or another run's checkpoint
  loop.py           train(): the run (resume, steps, metrics, SIGTERM, export, evaluation)
  metrics.py        JSONL / TensorBoard metrics, throughput, progress bar
  flops.py          model FLOPs per token by layer kind (MFU)
  distributed.py    DistributedConfig, jax.distributed.initialize from settings or the environment
  aot.py            compile the train step for a TPU topology on a CPU machine (imported on demand: libtpu)
"""

from ssmjax.sharding import MeshConfig
from ssmjax.train.checkpointing import CheckpointConfig, Checkpointer
from ssmjax.train.config import TrainConfig
from ssmjax.train.distributed import DistributedConfig
from ssmjax.train.flops import flops_per_token
from ssmjax.train.loop import TrainResult, train
from ssmjax.train.optim import OptimizerConfig, make_optimizer
from ssmjax.train.state import TrainState

__all__ = [
    "CheckpointConfig",
    "Checkpointer",
    "DistributedConfig",
    "MeshConfig",
    "OptimizerConfig",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "flops_per_token",
    "make_optimizer",
    "train",
]
