"""Token scoring: the log-probability a model gives each scored token of many token sequences, batched.

Perplexity (`ssmjax.evaluation.perplexity`) and the lm-evaluation-harness adapter
(`ssmjax.evaluation.lm_eval_adapter`) both reduce to one question: given tokens ``t_0 .. t_{n-1}``, what is
``log p(t_j | t_0 .. t_{j-1})`` for the last ``num_scored`` positions ``j``? `TokenScorer.score` answers it for a list
of `ScoreRequest` s:

1. A request longer than ``max_length + 1`` tokens keeps its last ``max_length + 1`` (the earliest context is dropped;
   every scored token must still fit, else ValueError).
2. Requests are sorted by length, longest first, and cut into batches of ``batch_size`` rows. Each batch is
   right-padded to a bucket length (the next power of two, at least ``min_length``, at most ``max_length``) and to
   ``batch_size`` rows, so a whole evaluation compiles one program per bucket. Right padding cannot change the real
   positions: every layer is causal.
3. One jitted forward per batch gives float32 logits; the target's log-softmax over the full vocabulary (padded
   vocabulary entries included: they are part of the model's distribution) is taken on the device, so only (B, T)
   numbers come back. Sums over tokens are taken on the host in float64. The logits are the memory peak:
   batch_size x bucket x vocab x 4 bytes (8 x 4096 x 256,000 is 34 GB: use a smaller batch for the 8B models).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssmjax.config import ModelConfig
from ssmjax.models.lm import LanguageModel


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
  """Score the last ``num_scored`` of ``tokens``, each given every token before it."""

  tokens: Sequence[int]
  num_scored: int


@dataclasses.dataclass(frozen=True)
class TokenScores:
  """Per scored token: its log-probability and whether it was the model's argmax."""

  logprobs: np.ndarray  # float32 [num_scored]
  greedy: np.ndarray  # bool [num_scored]

  @property
  def logprob(self) -> float:
    """The sum of ``logprobs`` (float64)."""
    return float(np.sum(self.logprobs, dtype=np.float64))

  @property
  def is_greedy(self) -> bool:
    """True when every scored token was the argmax (greedy decoding would produce them)."""
    return bool(np.all(self.greedy))


@functools.partial(jax.jit, static_argnames=("config",))
def target_logprobs(params: Any, inputs: jax.Array, targets: jax.Array, *,
                    config: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """inputs, targets (B, T) int32 -> (log p(target) float32 (B, T), target == argmax (B, T))."""
  logits = LanguageModel(config).apply({"params": params}, inputs)
  # log_softmax at the target only: no second (B, T, V) array next to the logits.
  chosen = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
  return chosen, jnp.argmax(logits, axis=-1) == targets


def _bucket(length: int, min_length: int, max_length: int | None) -> int:
  bucket = max(min_length, 1 << max(0, length - 1).bit_length())
  return bucket if max_length is None else min(bucket, max_length)


class TokenScorer:
  """Scores `ScoreRequest` s with a model (see the module docstring).

  Args:
    config, params: the model.
    batch_size: rows per forward pass (the last batch is padded to it).
    max_length: the most input tokens per row (None: no limit); longer requests lose their earliest context.
    min_length: the shortest bucket (fewer, larger buckets for many short requests).
    pad_id: the token that fills padding (its scores are discarded).
  """

  def __init__(self, config: ModelConfig, params: Any, *, batch_size: int = 8, max_length: int | None = None,
               min_length: int = 16, pad_id: int = 0):
    for name, value in (("batch_size", batch_size), ("min_length", min_length)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
      raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    if not 0 <= pad_id < config.vocab_size:
      raise ValueError(f"pad_id must be in [0, vocab_size={config.vocab_size}), got {pad_id}")
    self.config, self.params = config, params
    self.batch_size, self.max_length, self.min_length, self.pad_id = batch_size, max_length, min_length, pad_id

  def _prepare(self, index: int, request: ScoreRequest) -> np.ndarray:
    tokens = np.asarray(request.tokens, dtype=np.int64).reshape(-1)
    n = int(request.num_scored)
    if n < 1 or n >= tokens.size:
      raise ValueError(f"request {index}: num_scored must be in [1, len(tokens) - 1] = [1, {tokens.size - 1}] (the "
                       f"first token has no context), got {request.num_scored}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
      raise ValueError(f"request {index}: token ids must be in [0, vocab_size={self.config.vocab_size}), got "
                       f"min {tokens.min()}, max {tokens.max()}")
    if self.max_length is not None and tokens.size > self.max_length + 1:
      if n > self.max_length:
        raise ValueError(f"request {index}: {n} scored tokens do not fit max_length={self.max_length}")
      tokens = tokens[-(self.max_length + 1):]
    return tokens.astype(np.int32)

  def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
    """`TokenScores` for each request, in the order given."""
    rows = [self._prepare(i, r) for i, r in enumerate(requests)]
    order = sorted(range(len(rows)), key=lambda i: -rows[i].size)
    results: list[TokenScores | None] = [None] * len(rows)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      width = _bucket(rows[chunk[0]].size - 1, self.min_length, self.max_length)
      inputs = np.full((self.batch_size, width), self.pad_id, np.int32)
      targets = np.full((self.batch_size, width), self.pad_id, np.int32)
      for row, i in enumerate(chunk):
        tokens = rows[i]
        inputs[row, :tokens.size - 1] = tokens[:-1]
        targets[row, :tokens.size - 1] = tokens[1:]
      logprobs, greedy = jax.device_get(target_logprobs(self.params, inputs, targets, config=self.config))
      for row, i in enumerate(chunk):
        end, n = rows[i].size - 1, int(requests[i].num_scored)
        results[i] = TokenScores(logprobs=np.asarray(logprobs[row, end - n:end]),
                                 greedy=np.asarray(greedy[row, end - n:end]))
    return results  # type: ignore[return-value]
