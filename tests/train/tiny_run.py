"""Shared tiny run configs for the training tests: a hybrid that every test mesh can shard, and quick data."""

import os
import sys

from ssmjax.config import AttentionConfig, Mamba2Config, MLPConfig, ModelConfig
from ssmjax.data import CopyingTask, DataConfig
from ssmjax.train import CheckpointConfig, OptimizerConfig, TrainConfig

# d_model 32 splits over fsdp=8; 4 Mamba-2 groups, 4 attention heads and kv heads, MLP 64 and vocab 512 over tensor=4.
MODEL = ModelConfig(vocab_size=512, d_model=32, pattern="M*-",
                    mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=4, chunk_size=8),
                    attention=AttentionConfig(num_heads=4, num_kv_heads=4), mlp=MLPConfig(hidden_size=64))
DATA = DataConfig(tasks=("copying",), copying=CopyingTask(min_len=2, max_len=6), seq_len=32, global_batch_size=8,
                  prefetch=0)


# One schedule length for every test run, so that runs of different lengths on the same mesh share the compiled
# functions (ssmjax.train.loop.run_functions is cached by model, optimizer, schedule, mesh and rules).
OPTIMIZER = OptimizerConfig(learning_rate=1e-2, warmup_steps=2, decay_steps=6)


def train_config(num_steps=5, **overrides):
  base = dict(num_steps=num_steps, log_every=1, progress_bar=False, tensorboard=False, eval_examples=0,
              export_model=False, checkpoint=CheckpointConfig(every_steps=0), optimizer=OPTIMIZER)
  base.update(overrides)
  return TrainConfig(**base)


GIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_run.gin")  # the same run for train.py
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_py_command(workdir, *flags):
  return [sys.executable, os.path.join(REPO, "train.py"), f"--gin_file={GIN_FILE}", f"--workdir={workdir}", *flags]


def subprocess_env(cache_dir, devices=8, **extra):
  """The environment of a train.py subprocess: CPU, ``devices`` virtual devices, a shared compilation cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir), PYTHONPATH=REPO)
  env.update(extra)
  return env
