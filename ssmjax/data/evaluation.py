"""Evaluation sets for the synthetic tasks and answer accuracy under teacher forcing.

An `EvalSet` holds one example per row, padded to a common length. ``answer_accuracy`` runs ``predict_fn`` (int32
inputs [b, t] -> logits [b, t, V]) once per batch and counts a query as correct when the argmax at every one of its
answer positions equals the target. With teacher forcing the earlier answer tokens are the true ones, so a query is
correct exactly when greedy decoding of its answer from the true prompt reproduces the answer (argmax ties aside).

``phonebook_eval_set`` makes sets of a given book size, or the largest book that fits a given context length, for
sweeps over context length. In the phone book the first ``num_shots`` queries are unscored demonstrations.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ssmjax.data.config import DataConfig, PhonebookTask
from ssmjax.data.synthetic import PROMPT, Segment, encode_segments, example_fn, phonebook_example
from ssmjax.tokenizers import Tokenizer, load_tokenizer

PredictFn = Callable[[np.ndarray], np.ndarray]
_EVAL_DOMAIN = 0xE7A1  # Keeps evaluation randomness apart from the training streams.


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """Teacher-forcing rows: ``targets`` are ``inputs`` shifted by one; ``query_ids`` mark the scored answers."""

  inputs: np.ndarray  # int32 [n, t]
  targets: np.ndarray  # int32 [n, t]
  query_ids: np.ndarray  # int32 [n, t]: scored query (0, 1, ...) of each target, PROMPT (-1) elsewhere.
  lengths: np.ndarray  # int32 [n]: real (unpadded) input tokens per row.

  @property
  def num_queries(self) -> int:
    return int(sum(len(np.unique(row[row >= 0])) for row in self.query_ids))


def _resolve(tokenizer: Tokenizer | str) -> Tokenizer:
  return load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer


def _rows(examples: list[list[Segment]], tokenizer: Tokenizer, pad_to_multiple: int) -> EvalSet:
  encoded = [encode_segments(segments, tokenizer) for segments in examples]
  width = max(len(e.tokens) for e in encoded) - 1
  width = -(-width // pad_to_multiple) * pad_to_multiple
  tokens = np.full((len(encoded), width + 1), tokenizer.pad_id, np.int32)
  query_ids = np.full((len(encoded), width + 1), PROMPT, np.int32)
  for i, e in enumerate(encoded):
    tokens[i, :len(e.tokens)] = e.tokens
    query_ids[i, :len(e.tokens)] = e.query_ids
  lengths = np.asarray([len(e.tokens) - 1 for e in encoded], np.int32)
  return EvalSet(tokens[:, :-1], tokens[:, 1:], query_ids[:, 1:], lengths)


def _score_from(segments: list[Segment], first_scored: int) -> list[Segment]:
  """Renumbers answers so that queries before ``first_scored`` are unscored (PROMPT)."""
  return [Segment(s.text, s.query - first_scored if s.query >= first_scored else PROMPT) for s in segments]


def phonebook_book_size_for_length(context_len: int, task: PhonebookTask = PhonebookTask(),
                                   tokenizer: Tokenizer | str = "byte") -> int:
  """The largest book size whose examples (with the task's queries) have at most ``context_len`` input tokens."""
  tokenizer = _resolve(tokenizer)

  def length(book_size: int) -> int:
    segments = phonebook_example(np.random.default_rng(0), task, book_size=book_size)
    return len(encode_segments(segments, tokenizer).tokens) - 1

  low, high = 0, 26**task.name_len  # length(low) fits (or low == 0); search the largest fitting size.
  if length(1) > context_len:
    raise ValueError(f"context_len={context_len} is shorter than a phone book of one entry ({length(1)} tokens)")
  while low < high:
    mid = (low + high + 1) // 2
    low, high = (mid, high) if length(mid) <= context_len else (low, mid - 1)
  return low


def phonebook_eval_set(*, num_examples: int, book_size: int | None = None, context_len: int | None = None,
                       seed: int = 0, task: PhonebookTask = PhonebookTask(), tokenizer: Tokenizer | str = "byte",
                       pad_to_multiple: int = 1) -> EvalSet:
  """``num_examples`` phone books of ``book_size`` entries (or the largest that fits ``context_len`` tokens).

  Each example has ``task.num_shots`` demonstration queries, then ``task.num_queries`` scored ones. Rows are padded
  with the tokenizer's PAD to a common length rounded up to ``pad_to_multiple``.
  """
  if (book_size is None) == (context_len is None):
    raise ValueError("phonebook_eval_set: give exactly one of book_size and context_len")
  task.validate()
  tokenizer = _resolve(tokenizer)
  if book_size is None:
    book_size = phonebook_book_size_for_length(context_len, task, tokenizer)
  if not 1 <= book_size <= 26**task.name_len:
    raise ValueError(f"book_size must be in [1, {26**task.name_len}] for name_len={task.name_len}, got {book_size}")
  if num_examples < 1 or pad_to_multiple < 1:
    raise ValueError(f"num_examples and pad_to_multiple must be >= 1, got {num_examples}, {pad_to_multiple}")
  examples = []
  for i in range(num_examples):
    rng = np.random.default_rng([seed % 2**63, book_size, i, _EVAL_DOMAIN])
    examples.append(_score_from(phonebook_example(rng, task, book_size=book_size), task.num_shots))
  return _rows(examples, tokenizer, pad_to_multiple)


def task_eval_set(config: DataConfig, task: str, *, num_examples: int, seed: int = 0,
                  pad_to_multiple: int = 1) -> EvalSet:
  """Held-out examples of a training task, drawn as in training (phone book: the first num_shots unscored)."""
  tokenizer = load_tokenizer(config.tokenizer)
  make = example_fn(config, task)
  first_scored = config.phonebook.num_shots if task == "phonebook" else 0
  examples = [_score_from(make(np.random.default_rng([seed % 2**63, i, _EVAL_DOMAIN + 1])), first_scored)
              for i in range(num_examples)]
  return _rows(examples, tokenizer, pad_to_multiple)


def answer_accuracy(predict_fn: PredictFn, eval_set: EvalSet, *, batch_size: int = 8) -> float:
  """Fraction of scored queries whose every answer token is the argmax of ``predict_fn``'s logits.

  Batches have a fixed size (the last is padded with copies of row 0 and the copies ignored), so a jitted
  ``predict_fn`` compiles once per eval set.
  """
  n = len(eval_set.inputs)
  correct_total, queries_total = 0, 0
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    inputs = eval_set.inputs[start:stop]
    if stop - start < batch_size:
      inputs = np.concatenate([inputs, np.repeat(eval_set.inputs[:1], batch_size - (stop - start), axis=0)])
    logits = np.asarray(predict_fn(inputs))
    if logits.shape[:2] != inputs.shape:
      raise ValueError(f"predict_fn returned logits of shape {logits.shape} for inputs of shape {inputs.shape}; "
                       "expected [batch, length, vocab]")
    hits = logits[:stop - start].argmax(-1) == eval_set.targets[start:stop]
    query_ids = eval_set.query_ids[start:stop]
    num_q = int(query_ids.max(initial=-1)) + 1
    for q in range(num_q):
      scored = query_ids == q
      has_query = scored.any(axis=1)
      all_right = np.all(hits | ~scored, axis=1)
      correct_total += int(np.sum(all_right & has_query))
      queries_total += int(np.sum(has_query))
  if queries_total == 0:
    raise ValueError("eval set has no scored queries")
  return correct_total / queries_total


def phonebook_accuracy(predict_fn: PredictFn, *, num_examples: int = 64, book_size: int | None = None,
                       context_len: int | None = None, seed: int = 0, task: PhonebookTask = PhonebookTask(),
                       tokenizer: Tokenizer | str = "byte", batch_size: int = 8, pad_to_multiple: int = 1) -> float:
  """Phone-book lookup accuracy (teacher-forced answers, all tokens right; see the module docstring)."""
  eval_set = phonebook_eval_set(num_examples=num_examples, book_size=book_size, context_len=context_len, seed=seed,
                                task=task, tokenizer=tokenizer, pad_to_multiple=pad_to_multiple)
  return answer_accuracy(predict_fn, eval_set, batch_size=batch_size)
