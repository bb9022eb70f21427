"""The pure train step: masked next-token cross-entropy, gradient accumulation by ``lax.scan``, one optimizer update.

A batch is ``{"inputs", "targets": int32 (B, T), "loss_mask": float32 (B, T)}`` for one optimizer step (the global
batch). With ``accum_steps = A`` it is split into A micro-batches of B / A rows (row ``i * A + a`` goes to
micro-batch ``a``, so a batch sharded over its rows stays where it is); the summed losses and gradients of the micro-
batches are divided once by the total mask weight, so accumulating is the same as one big batch up to float
rounding. The loss is float32 whatever the compute dtype (the model returns float32 logits). With
``loss_chunk_size`` the output layer and the loss run over chunks of positions (`ssmjax.models.loss`), so the whole
(B, T, V) logits are never made: the same values up to float32 summation order.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from ssmjax.models import loss as loss_lib
from ssmjax.models.lm import LanguageModel
from ssmjax.train.state import TrainState

BATCH_KEYS = ("inputs", "targets", "loss_mask")


def loss_sums(params: Any, model: LanguageModel, batch: dict, rng: jax.Array | None = None,
              loss_chunk_size: int = 0) -> tuple[jax.Array, dict]:
  """(sum of masked cross-entropy, {"weight": sum of the mask, "correct": masked argmax hits}) over a batch.

  ``loss_chunk_size`` > 0: the output layer and the loss run over chunks of that many positions
  (`ssmjax.models.loss.chunked_cross_entropy_sums`), never making the whole (B, T, V) logits; 0: whole logits.
  """
  rngs = {"dropout": rng} if rng is not None else None
  mask = batch["loss_mask"].astype(jnp.float32)
  if loss_chunk_size:
    hidden = model.apply({"params": params}, batch["inputs"], rngs=rngs, return_hidden=True)
    weight, vocab_major = loss_lib.output_weight(params, model.config)
    loss_sum, correct = loss_lib.chunked_cross_entropy_sums(hidden, weight, batch["targets"], mask,
                                                            chunk_size=loss_chunk_size, vocab_major=vocab_major)
  else:
    logits = model.apply({"params": params}, batch["inputs"], rngs=rngs)
    loss_sum, correct = loss_lib.cross_entropy_sums(logits, batch["targets"], mask)
  return loss_sum, {"weight": jnp.sum(mask), "correct": correct}


def split_microbatches(batch: dict, accum_steps: int) -> dict:
  """(B, ...) -> (A, B / A, ...): row ``i * A + a`` of the batch is row ``i`` of micro-batch ``a``."""
  def split(x):
    rows = x.shape[0]
    if rows % accum_steps:
      raise ValueError(f"the batch has {rows} rows, not divisible by accum_steps={accum_steps}")
    return jnp.swapaxes(x.reshape(rows // accum_steps, accum_steps, *x.shape[1:]), 0, 1)

  return {k: split(batch[k]) for k in BATCH_KEYS}


def make_train_step(model: LanguageModel, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    accum_steps: int = 1,
                    loss_chunk_size: int = 0) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """``train_step(state, batch) -> (state, metrics)``; metrics: loss, grad_norm (before clipping), lr, tokens
  (loss-mask weight), accuracy (masked next-token argmax). ``loss_chunk_size``: see `loss_sums`."""
  if accum_steps < 1:
    raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
  if loss_chunk_size < 0:
    raise ValueError(f"loss_chunk_size must be >= 0 (0: unchunked), got {loss_chunk_size}")
  grad_fn = jax.value_and_grad(functools.partial(loss_sums, loss_chunk_size=loss_chunk_size), has_aux=True)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng, step_rng = jax.random.split(state.rng)
    if accum_steps == 1:
      (loss_sum, aux), grads = grad_fn(state.params, model, batch, step_rng)
    else:
      micro = split_microbatches(batch, accum_steps)
      zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)

      def accumulate(carry, inputs):
        grads_sum, loss_total, weight, correct = carry
        microbatch, micro_rng = inputs
        (loss, aux), grads = grad_fn(state.params, model, microbatch, micro_rng)
        grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
        return (grads_sum, loss_total + loss, weight + aux["weight"], correct + aux["correct"]), None

      init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
      (grads, loss_sum, weight, correct), _ = jax.lax.scan(
          accumulate, init, (micro, jax.random.split(step_rng, accum_steps)))
      aux = {"weight": weight, "correct": correct}
    weight = jnp.maximum(aux["weight"], 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / weight, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
               "tokens": aux["weight"], "accuracy": aux["correct"] / weight}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  return train_step


def make_eval_step(model: LanguageModel, loss_chunk_size: int = 0) -> Callable[[Any, dict], dict]:
  """``eval_step(params, batch) -> {"loss_sum", "weight", "correct"}`` (sums, to be added over batches)."""

  def eval_step(params: Any, batch: dict) -> dict:
    loss_sum, aux = loss_sums(params, model, batch, loss_chunk_size=loss_chunk_size)
    return {"loss_sum": loss_sum, **aux}

  return eval_step
