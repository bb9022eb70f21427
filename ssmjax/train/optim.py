"""The optimizer: global-norm clipping, then AdamW with a masked weight decay and a Megatron learning-rate schedule.

Schedules (SPEC §2.2, Megatron's ``optimizer_param_scheduler.py``), counted in optimizer steps:

  ``cosine``  linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then a cosine from ``learning_rate`` to
              ``min_learning_rate`` that ends at ``decay_steps`` (counted from step 0, as Megatron counts), then
              ``min_learning_rate``.
  ``wsd``     warmup, then constant ``learning_rate`` until ``decay_steps - wsd_decay_steps``, then a decay to
              ``min_learning_rate`` over the last ``wsd_decay_steps``: ``linear`` (1 - r), ``cosine``
              (0.5 (cos(pi r) + 1)) or ``exponential`` (2 * 0.5^r - 1) in the fraction r of the decay.
  ``constant`` warmup, then ``learning_rate``.

Weight decay: Megatron decays every parameter except biases and 1-D parameters (``name.endswith(".bias") or
len(shape) == 1``); mamba_ssm additionally marks ``A_log`` and ``D`` as no-decay whatever their shape. Here the
Mamba-1 ``A_log`` is 2-D (E, N) and the Mamba-2 conv bias is 2-D (G, channels) because of the group-major layout,
so a shape rule alone would decay them. `decay_mask` therefore excludes by name as well: biases (every leaf whose
name ends in ``bias``, including ``dt_bias`` and ``dt_proj_bias``), norm ``scale`` s, ``A_log`` and ``D``, plus any
other 1-D parameter. What it decays: projection matrices, conv kernels (Megatron decays its 3-D conv1d.weight too),
the embedding and the output layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "wsd", "constant")
WSD_DECAY_STYLES = ("linear", "cosine", "exponential")
NO_DECAY_NAMES = ("A_log", "D", "scale")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW and its schedule. Defaults: the Megatron example recipe (SPEC §2.2) with a CPU-sized length."""

  learning_rate: float = 2.5e-4  # peak LR.
  min_learning_rate: float = 2.5e-5
  schedule: str = "cosine"  # "cosine", "wsd" or "constant".
  warmup_steps: int = 0
  decay_steps: int | None = None  # None: the run's total steps.
  wsd_decay_steps: int = 0  # length of the WSD decay phase (at the end of decay_steps).
  wsd_decay_style: str = "linear"
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float | None = 1.0  # global-norm gradient clipping; None: off.

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    if self.wsd_decay_style not in WSD_DECAY_STYLES:
      raise ValueError(f"OptimizerConfig.wsd_decay_style must be one of {WSD_DECAY_STYLES}, "
                       f"got {self.wsd_decay_style!r}")
    if self.learning_rate < 0 or self.min_learning_rate < 0:
      raise ValueError(f"learning rates must be >= 0, got {self.learning_rate}, {self.min_learning_rate}")
    if self.warmup_steps < 0 or self.wsd_decay_steps < 0:
      raise ValueError(f"warmup_steps and wsd_decay_steps must be >= 0, got {self.warmup_steps}, "
                       f"{self.wsd_decay_steps}")


def megatron_lr_reference(config: OptimizerConfig, step: int, total_steps: int) -> float:
  """The learning rate at ``step`` written as Megatron's scheduler computes it, in plain Python: the oracle."""
  peak, low = config.learning_rate, config.min_learning_rate
  warmup, decay = config.warmup_steps, config.decay_steps or total_steps
  if warmup > 0 and step <= warmup:
    return peak * step / warmup
  if config.schedule == "constant":
    return peak
  if step > decay:
    return low
  if config.schedule == "cosine":
    ratio = (step - warmup) / (decay - warmup)
    return low + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (peak - low)
  start = decay - config.wsd_decay_steps  # wsd
  if step <= start:
    return peak
  r = (step - start) / config.wsd_decay_steps
  coeff = {"linear": 1.0 - r, "cosine": 0.5 * (math.cos(math.pi * r) + 1.0), "exponential": 2.0 * 0.5**r - 1.0}
  return low + coeff[config.wsd_decay_style] * (peak - low)


def _wsd_decay(peak: float, low: float, steps: int, style: str) -> optax.Schedule:
  def schedule(count):
    r = jnp.clip(count / max(steps, 1), 0.0, 1.0)
    if style == "linear":
      coeff = 1.0 - r
    elif style == "cosine":
      coeff = 0.5 * (jnp.cos(jnp.pi * r) + 1.0)
    else:
      coeff = 2.0 * 0.5**r - 1.0
    return low + coeff * (peak - low)

  return schedule


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """The optax schedule of ``config`` for a run of ``total_steps`` optimizer steps."""
  peak, low, warmup = config.learning_rate, config.min_learning_rate, config.warmup_steps
  decay = config.decay_steps or total_steps
  if config.schedule != "constant" and decay <= warmup:
    raise ValueError(f"OptimizerConfig.decay_steps ({decay}) must be larger than warmup_steps ({warmup})")
  if config.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay, end_value=low)
  if not 0 < config.wsd_decay_steps <= decay - warmup:
    raise ValueError(f"OptimizerConfig.wsd_decay_steps ({config.wsd_decay_steps}) must be in (0, decay_steps - "
                     f"warmup_steps] = (0, {decay - warmup}]")
  stable_end = decay - config.wsd_decay_steps
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak),
       _wsd_decay(peak, low, config.wsd_decay_steps, config.wsd_decay_style), optax.constant_schedule(low)],
      [warmup, stable_end, decay])


def _leaf_name(path) -> str:
  last = path[-1]
  return str(getattr(last, "key", getattr(last, "name", last)))


def decays(name: str, ndim: int) -> bool:
  """Whether a parameter called ``name`` (its leaf name) with ``ndim`` dimensions gets weight decay."""
  return not (name.endswith("bias") or name in NO_DECAY_NAMES or ndim <= 1)


def decay_mask(params: Any) -> Any:
  """A tree of booleans like ``params``: True where weight decay applies (see the module docstring)."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: decays(_leaf_name(path), len(leaf.shape)), params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``clip_by_global_norm(clip_norm)`` then AdamW(b1, b2, eps, weight_decay masked by `decay_mask`)."""
  schedule = learning_rate_schedule(config, total_steps)
  adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                      mask=decay_mask)
  parts = ([optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm is not None else []) + [adamw]
  return optax.chain(*parts), schedule

