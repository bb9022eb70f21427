"""Masked next-token cross-entropy from the final hidden states, over chunks of positions (no whole logits array).

The output layer of a large-vocabulary model makes the biggest activation of a train step: float32 logits of
(B, T, V) are 4 GiB per sequence of 4,096 tokens at V = 256,000, and autodiff keeps them (and their softmax) for the
backward pass. `chunked_cross_entropy_sums` computes the output layer and the loss over chunks of Q positions with
`jax.lax.scan`, so at most one chunk's (B, Q, V) logits exist at a time, in the forward and in the backward pass:

  forward   per chunk: logits = h @ W (in the compute dtype, then float32, as `LanguageModel` does), the summed
            masked cross-entropy, the masked argmax hits, and the log-normaliser of each position (B, Q), kept;
  backward  per chunk (a `jax.custom_vjp`): the chunk's logits again, softmax = exp(logits - log-normaliser),
            dlogits = (softmax - onehot(target)) * mask * g, dh = dlogits @ W^T, and dW accumulated in float32.

Letters: B batch, T length, Q positions per chunk, C chunks (ceil(T / Q)), D d_model, V vocab. Chunk c holds the
positions ``q * C + c`` (strided, not contiguous): when the length is sharded over devices in contiguous blocks
(context parallelism), every chunk then has positions on every device, and the reshape to chunks moves no data.
T is padded to C * Q with masked positions. The values equal `cross_entropy_sums` of the whole logits up to the
order of float32 summation (the per-position terms are the same operations on the same numbers).

Sharding: the output weight is constrained to be whole over d_model (FSDP gathers it once, in the compute dtype)
and split over the vocabulary as the ``vocab`` rule says; hidden states and logits keep the batch (and length)
sharding of the activations, so no device ever holds the (tokens, vocab) array of the global batch.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssmjax.config import ModelConfig
from ssmjax.sharding import ACT_EMBED, ACT_VOCAB, BATCH, LENGTH, VOCAB, constrain

__all__ = ["chunked_cross_entropy_sums", "cross_entropy_sums", "output_weight"]


def output_weight(params: Any, config: ModelConfig) -> tuple[jax.Array, bool]:
  """The output layer's weight in ``params`` of ``LanguageModel(config)`` and whether it is vocab-major.

  Untied: ``lm_head`` (D, V), False. Tied: the embedding (V, D), True.
  """
  if config.tie_embeddings:
    return params["embed"]["embedding"], True
  return params["lm_head"], False


def _per_position(logits_bqv: jax.Array, targets_bq: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(cross-entropy, log-normaliser, argmax hit) per position of float32 logits: optax's
  ``softmax_cross_entropy_with_integer_labels`` formula (logsumexp minus the target's logit, so the values match it
  bit for bit), with the target's logit read through a one-hot mask, which XLA partitions over a sharded vocabulary
  without gathering it."""
  vocab = logits_bqv.shape[-1]
  log_normalizer = jax.nn.logsumexp(logits_bqv, axis=-1)
  onehot = targets_bq[..., None] == jax.lax.broadcasted_iota(jnp.int32, (1, 1, vocab), 2)
  label_logit = jnp.sum(jnp.where(onehot, logits_bqv, 0.0), axis=-1)
  hit = (jnp.argmax(logits_bqv, axis=-1) == targets_bq).astype(jnp.float32)
  return log_normalizer - label_logit, log_normalizer, hit


def _logits(h_bqd: jax.Array, weight: jax.Array, vocab_major: bool) -> jax.Array:
  """One chunk's float32 logits (B, Q, V): the product in the compute dtype, as `LanguageModel` computes them."""
  equation = "bqd,vd->bqv" if vocab_major else "bqd,dv->bqv"
  return constrain(jnp.einsum(equation, h_bqd, weight).astype(jnp.float32), (BATCH, LENGTH, ACT_VOCAB))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk_sums(vocab_major: bool, h_cbqd, weight, targets_cbq, mask_cbq):
  return _chunk_sums_fwd(vocab_major, h_cbqd, weight, targets_cbq, mask_cbq)[0]


def _chunk_sums_fwd(vocab_major, h_cbqd, weight, targets_cbq, mask_cbq):
  def body(carry, chunk):
    loss, correct = carry
    h, targets, mask = chunk
    ce, lse, hit = _per_position(_logits(h, weight, vocab_major), targets)
    return (loss + jnp.sum(ce * mask), correct + jnp.sum(hit * mask)), lse

  zero = jnp.zeros((), jnp.float32)
  (loss, correct), lse_cbq = jax.lax.scan(body, (zero, zero), (h_cbqd, targets_cbq, mask_cbq))
  return (loss, correct), (h_cbqd, weight, targets_cbq, mask_cbq, lse_cbq)


def _chunk_sums_bwd(vocab_major, residuals, cotangents):
  h_cbqd, weight, targets_cbq, mask_cbq, lse_cbq = residuals
  g_loss, _ = cotangents  # the hit count has no gradient.
  vocab = weight.shape[0] if vocab_major else weight.shape[1]

  def body(dweight, chunk):
    h, targets, mask, lse = chunk
    probs = jnp.exp(_logits(h, weight, vocab_major) - lse[..., None])
    onehot = targets[..., None] == jax.lax.broadcasted_iota(jnp.int32, (1, 1, vocab), 2)
    dlogits = ((probs - onehot) * (mask * g_loss)[..., None]).astype(h.dtype)
    dlogits = constrain(dlogits, (BATCH, LENGTH, ACT_VOCAB))
    if vocab_major:
      dh = jnp.einsum("bqv,vd->bqd", dlogits, weight)
      dweight = dweight + jnp.einsum("bqv,bqd->vd", dlogits, h, preferred_element_type=jnp.float32)
    else:
      dh = jnp.einsum("bqv,dv->bqd", dlogits, weight)
      dweight = dweight + jnp.einsum("bqd,bqv->dv", h, dlogits, preferred_element_type=jnp.float32)
    return dweight, constrain(dh, (BATCH, LENGTH, ACT_EMBED))

  dweight0 = _constrain_weight(jnp.zeros(weight.shape, jnp.float32), vocab_major)
  dweight, dh_cbqd = jax.lax.scan(body, dweight0, (h_cbqd, targets_cbq, mask_cbq, lse_cbq))
  dtargets = np.zeros(targets_cbq.shape, jax.dtypes.float0)
  return dh_cbqd, dweight.astype(weight.dtype), dtargets, jnp.zeros_like(mask_cbq)


_chunk_sums.defvjp(_chunk_sums_fwd, _chunk_sums_bwd)


def _constrain_weight(weight: jax.Array, vocab_major: bool) -> jax.Array:
  """Whole over d_model, split over the vocabulary as the ``vocab`` rule says (FSDP: gathered where it is used)."""
  return constrain(weight, (VOCAB, None) if vocab_major else (None, VOCAB))


def _to_chunks(x_bt: jax.Array, num_chunks: int, padded: int) -> jax.Array:
  """(B, T, ...) -> (C, B, Q, ...) with position ``q * C + c`` at [c, :, q]; T zero-padded to C * Q."""
  pad = padded - x_bt.shape[1]
  if pad:
    x_bt = jnp.pad(x_bt, [(0, 0), (0, pad)] + [(0, 0)] * (x_bt.ndim - 2))
  b = x_bt.shape[0]
  return jnp.moveaxis(x_bt.reshape(b, padded // num_chunks, num_chunks, *x_bt.shape[2:]), 2, 0)


def chunked_cross_entropy_sums(hidden_btd: jax.Array, weight: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array,
                               *, chunk_size: int, vocab_major: bool = False) -> tuple[jax.Array, jax.Array]:
  """(sum of masked cross-entropy, sum of masked argmax hits), float32 scalars, over chunks of ``chunk_size``
  positions (see the module docstring).

  Args:
    hidden_btd: the final (normed) hidden states (B, T, D), in the compute dtype.
    weight: the output layer, (D, V), or (V, D) with ``vocab_major`` (tied embeddings); cast to the hidden states'
      dtype (the compute dtype) before use, as `LanguageModel` does. Use `output_weight` to pick it from params.
    targets_bt: int (B, T) token ids. mask_bt: (B, T) loss weights (0 where a position does not count).
    chunk_size: positions per chunk, Q >= 1: the logits of a chunk are (B, Q, V) float32.
  """
  if hidden_btd.ndim != 3:
    raise ValueError(f"hidden_btd must be (batch, length, d_model), got shape {hidden_btd.shape}")
  b, t, d = hidden_btd.shape
  if weight.ndim != 2 or weight.shape[1 if vocab_major else 0] != d:
    layout = "(vocab, d_model)" if vocab_major else "(d_model, vocab)"
    raise ValueError(f"weight must be {layout} with d_model {d} (vocab_major={vocab_major}), got shape {weight.shape}")
  for name, x in (("targets_bt", targets_bt), ("mask_bt", mask_bt)):
    if x.shape != (b, t):
      raise ValueError(f"{name} must have shape {(b, t)} (the hidden states' batch and length), got {x.shape}")
  if not jnp.issubdtype(targets_bt.dtype, jnp.integer):
    raise ValueError(f"targets_bt must hold integer token ids, got dtype {targets_bt.dtype}")
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  num_chunks = -(-t // min(chunk_size, t))
  padded = num_chunks * -(-t // num_chunks)
  h_cbqd = _to_chunks(hidden_btd, num_chunks, padded)
  targets_cbq = _to_chunks(targets_bt.astype(jnp.int32), num_chunks, padded)
  mask_cbq = _to_chunks(mask_bt.astype(jnp.float32), num_chunks, padded)
  weight = _constrain_weight(weight.astype(hidden_btd.dtype), vocab_major)
  return _chunk_sums(vocab_major, h_cbqd, weight, targets_cbq, mask_cbq)


def cross_entropy_sums(logits_btv: jax.Array, targets_bt: jax.Array, mask_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The reference: (sum of masked cross-entropy, sum of masked argmax hits) of whole float32 logits (B, T, V)."""
  mask = mask_bt.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt)
  hits = (jnp.argmax(logits_btv, axis=-1) == targets_bt).astype(jnp.float32)
  return jnp.sum(ce * mask), jnp.sum(hits * mask)
