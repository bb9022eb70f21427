"""Synthetic tasks (phonebook lookup, multi-query associative recall, copying) as deterministic grain datasets.

An example is a list of ``Segment``s: text plus the index of the query it answers (``PROMPT`` = -1 for everything that
is not an answer). Segments are tokenized one by one, so answer tokens are known exactly for any tokenizer (with the
byte tokenizer this equals tokenizing the whole text). A training row is filled with whole examples of one task, each
followed by EOD, and padded with PAD; the loss counts answer tokens only.

Row ``i`` of a task depends only on (seed, task name, i): grain's ``random_map`` gives every index its own generator.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from typing import Callable, NamedTuple

import grain
import numpy as np

from ssmjax.data.config import CopyingTask, DataConfig, MQARTask, PhonebookTask
from ssmjax.tokenizers import Tokenizer

PROMPT = -1
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_DIGITS = np.array(list("0123456789"))


class Segment(NamedTuple):
  text: str
  query: int  # Index of the query this text answers, or PROMPT.


@dataclasses.dataclass(frozen=True)
class EncodedExample:
  tokens: np.ndarray  # int32 [n]
  query_ids: np.ndarray  # int32 [n]: the query each token answers, PROMPT elsewhere.


def _random_strings(rng: np.random.Generator, count: int, length: int, symbols: np.ndarray,
                    distinct: bool) -> list[str]:
  """``count`` strings of ``length`` symbols; distinct ones are drawn without replacement from all combinations."""
  base = len(symbols)
  if distinct:
    codes = rng.choice(base**length, size=count, replace=False)
  else:
    codes = rng.integers(0, base**length, size=count)
  digits = (np.asarray(codes)[:, None] // base ** np.arange(length - 1, -1, -1)) % base
  return ["".join(row) for row in symbols[digits]]


def _pick_queries(rng: np.random.Generator, population: int, count: int) -> np.ndarray:
  """``count`` indices into ``population``, distinct while there are enough."""
  return rng.choice(population, size=count, replace=count > population)


def phonebook_example(rng: np.random.Generator, task: PhonebookTask, book_size: int | None = None) -> list[Segment]:
  """One phone book and its queries; query ``q`` answers with its number.

  ``num_shots + num_queries`` queries, or with ``num_queries=None`` one per entry in random order (at least
  ``num_shots + 1``).
  """
  if book_size is None:
    book_size = int(rng.integers(task.min_book_size, task.max_book_size + 1))
  names = _random_strings(rng, book_size, task.name_len, _LETTERS, distinct=True)
  numbers = _random_strings(rng, book_size, task.number_len, _DIGITS, distinct=False)
  book = "".join(task.book_format.format(name=n, number=p) for n, p in zip(names, numbers))
  segments = [Segment(book + task.separator, PROMPT)]
  prefix, suffix = task.query_format.split("{number}", 1)
  total = max(book_size, task.num_shots + 1) if task.num_queries is None else task.num_shots + task.num_queries
  for q, entry in enumerate(_pick_queries(rng, book_size, total)):
    segments += [Segment(prefix.format(name=names[entry]), PROMPT), Segment(numbers[entry], q),
                 Segment(suffix.format(name=names[entry]), PROMPT)]
  return segments


def mqar_example(rng: np.random.Generator, task: MQARTask) -> list[Segment]:
  """Key-value pairs written back to back, a separator, then queried keys each followed by its value (the answer)."""
  num_pairs = int(rng.integers(task.min_pairs, task.max_pairs + 1))
  keys = _random_strings(rng, num_pairs, task.key_len, _LETTERS, distinct=True)
  values = _random_strings(rng, num_pairs, task.value_len, _DIGITS, distinct=False)
  segments = [Segment("".join(k + v for k, v in zip(keys, values)) + task.separator, PROMPT)]
  num_queries = num_pairs if task.num_queries is None else task.num_queries
  for q, pair in enumerate(_pick_queries(rng, num_pairs, num_queries)):
    segments += [Segment(keys[pair], PROMPT), Segment(values[pair], q)]
  return segments + [Segment("\n", PROMPT)]


def copying_example(rng: np.random.Generator, task: CopyingTask) -> list[Segment]:
  """A random string, the separator, then the string again (the answer)."""
  length = int(rng.integers(task.min_len, task.max_len + 1))
  text = "".join(np.array(list(task.alphabet))[rng.integers(0, len(task.alphabet), size=length)])
  return [Segment(text + task.separator, PROMPT), Segment(text, 0), Segment("\n", PROMPT)]


def example_fn(config: DataConfig, task: str) -> Callable[[np.random.Generator], list[Segment]]:
  """The generator of one task, bound to its settings in ``config``."""
  makers = {"phonebook": phonebook_example, "mqar": mqar_example, "copying": copying_example}
  if task not in makers:
    raise ValueError(f"unknown synthetic task {task!r}; expected one of {tuple(makers)}")
  settings = getattr(config, task)
  return lambda rng: makers[task](rng, settings)


def encode_segments(segments: list[Segment], tokenizer: Tokenizer) -> EncodedExample:
  tokens, query_ids = [], []
  for segment in segments:
    ids = tokenizer.encode(segment.text) if segment.text else []
    tokens += ids
    query_ids += [segment.query] * len(ids)
  return EncodedExample(np.asarray(tokens, np.int32), np.asarray(query_ids, np.int32))


def largest_example(config: DataConfig, task: str, tokenizer: Tokenizer) -> int:
  """Tokens (EOD included) of the longest example the task's settings allow, from a max-size instance."""
  settings = getattr(config, task)
  rng = np.random.default_rng(0)
  if task == "phonebook":
    segments = phonebook_example(rng, settings, book_size=settings.max_book_size)
  elif task == "mqar":
    segments = mqar_example(rng, dataclasses.replace(settings, min_pairs=settings.max_pairs))
  else:
    segments = copying_example(rng, dataclasses.replace(settings, min_len=settings.max_len))
  return len(encode_segments(segments, tokenizer).tokens) + 1


class RowGenerator:
  """Fills one row of ``seq_len + 1`` tokens with whole examples of one task (grain random map)."""

  def __init__(self, make_example: Callable[[np.random.Generator], list[Segment]], tokenizer: Tokenizer, seq_len: int,
               task: str):
    self._make_example = make_example
    self._tokenizer = tokenizer
    self._row_len = seq_len + 1
    self._task = task

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del index  # The row depends on the index only through rng.
    tokens = np.full(self._row_len, self._tokenizer.pad_id, np.int32)
    answer = np.zeros(self._row_len, bool)
    filled = 0
    while True:
      example = encode_segments(self._make_example(rng), self._tokenizer)
      length = len(example.tokens) + 1  # + EOD
      if filled + length > self._row_len:
        if filled == 0:
          raise ValueError(f"a {self._task} example of {length} tokens does not fit in seq_len + 1 = {self._row_len}; "
                           "raise DataConfig.seq_len or make the task smaller")
        break
      tokens[filled:filled + length - 1] = example.tokens
      tokens[filled + length - 1] = self._tokenizer.eos_id
      answer[filled:filled + length - 1] = example.query_ids != PROMPT
      filled += length
    return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": answer[1:].astype(np.float32)}


def task_seed(seed: int, task: str) -> int:
  """A 32-bit seed for one task's stream, from the run seed and the task name (grain needs seeds in [0, 2**32))."""
  return int(np.random.SeedSequence([seed % 2**63, zlib.crc32(task.encode())]).generate_state(1)[0])


def synthetic_rows(config: DataConfig, tokenizer: Tokenizer) -> grain.MapDataset:
  """An infinite ``MapDataset`` of training rows, the tasks mixed by ``config.task_weights``."""
  for task in config.tasks:
    needed = largest_example(config, task, tokenizer)
    if needed > config.seq_len + 1:
      raise ValueError(f"the largest {task} example has {needed} tokens (EOD included) but rows hold seq_len + 1 = "
                       f"{config.seq_len + 1}; raise DataConfig.seq_len or shrink DataConfig.{task}")
  per_task = []
  for task in config.tasks:
    rows = grain.MapDataset.range(sys.maxsize)
    per_task.append(rows.random_map(RowGenerator(example_fn(config, task), tokenizer, config.seq_len, task),
                                    seed=task_seed(config.seed, task)))
  if len(per_task) == 1:
    return per_task[0]
  return grain.MapDataset.mix(per_task, list(config.task_weights) or None)
