"""Phone-book lookup accuracy against book size / context length: where pure SSMs lag (Waleffe et al. 2024, §3).

A model reads a phone book (``name:number`` lines), ``num_shots`` demonstration queries with their answers, then
``num_queries`` scored queries; a query counts as correct when every digit of its number is the model's argmax given
the true prefix (`ssmjax.data.answer_accuracy`: teacher forcing, which for one query is exactly greedy decoding of its
answer from the prompt). The sweep grows the book, by entries (``book_sizes``) or by tokens (``context_lengths``:
the largest book that fits), so accuracy is plotted against context length::

  sweep = PhonebookSweep(context_lengths=(64, 128, 256, 512))
  points = phonebook_sweep(model_predict_fn(config, params), sweep)
  report = run_phonebook({"my model": (config, params)}, sweep, output_dir="/tmp/pb")   # JSON + PNG

The few-shot format is the `PhonebookTask` (book and query formats, name and number lengths, shots, queries).
The paper's own prompt, shot count and lengths were not found (SPEC §3); the defaults here are ours.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from ssmjax.data import evaluation as data_eval
from ssmjax.data.config import PhonebookTask
from ssmjax.tokenizers import Tokenizer, load_tokenizer

PredictFn = data_eval.PredictFn
RESULTS_FILE = "phonebook.json"
PLOT_FILE = "phonebook.png"
DEFAULT_TASK = PhonebookTask(num_shots=2, num_queries=4)


@dataclasses.dataclass(frozen=True)
class PhonebookSweep:
  """The points of a sweep (give ``book_sizes`` or ``context_lengths``, not both) and how each is scored."""

  book_sizes: tuple[int, ...] = ()  # entries per book, one point each.
  context_lengths: tuple[int, ...] = ()  # input tokens: each point uses the largest book that fits.
  task: PhonebookTask = DEFAULT_TASK  # the format: book / query formats, name and number lengths, shots, queries.
  num_examples: int = 32  # phone books per point (each with task.num_queries scored queries).
  seed: int = 0  # books and queries derive from (seed, book size, example index) only.
  batch_size: int = 8  # rows per model call; the last batch of a point is padded to it (one compile per length).
  pad_to_multiple: int = 64  # rows are padded with PAD to a multiple of this (fewer distinct shapes to compile).

  def __post_init__(self):
    if bool(self.book_sizes) == bool(self.context_lengths):
      raise ValueError("PhonebookSweep: give exactly one of book_sizes and context_lengths (a non-empty tuple), got "
                       f"book_sizes={self.book_sizes!r}, context_lengths={self.context_lengths!r}")
    for name in ("book_sizes", "context_lengths"):
      values = getattr(self, name)
      if any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"PhonebookSweep.{name} must hold positive integers, got {values!r}")
    for name in ("num_examples", "batch_size", "pad_to_multiple"):
      if getattr(self, name) < 1:
        raise ValueError(f"PhonebookSweep.{name} must be >= 1, got {getattr(self, name)}")
    if self.task.num_queries is None:
      raise ValueError("PhonebookSweep.task.num_queries must be a number (scored queries per book), got None")
    self.task.validate()


@dataclasses.dataclass(frozen=True)
class PhonebookPoint:
  """One point of a sweep: a book size, the context it makes, and how many scored queries were answered exactly."""

  book_size: int
  context_len: int  # input tokens of the longest example (what the model reads up to its last answer).
  mean_context_len: float
  correct: int
  total: int  # scored queries: num_examples x task.num_queries.
  chance: float  # accuracy of a uniformly random number: 10 ** -number_len.

  @property
  def accuracy(self) -> float:
    return self.correct / self.total

  def to_dict(self) -> dict:
    return dataclasses.asdict(self) | {"accuracy": self.accuracy}


def model_predict_fn(config, params: Any) -> PredictFn:
  """int32 inputs [b, t] -> float32 logits [b, t, V] of ``config``'s model, jitted (compiled once per shape)."""
  import jax  # Imported here: the sweeps and their tests with oracle predictors need no JAX.

  from ssmjax.models.lm import LanguageModel

  apply = jax.jit(lambda p, ids: LanguageModel(config).apply({"params": p}, ids))
  return lambda inputs: np.asarray(apply(params, np.asarray(inputs, np.int32)))


def _book_sizes(sweep: PhonebookSweep, tokenizer: Tokenizer) -> list[int]:
  if sweep.book_sizes:
    return list(sweep.book_sizes)
  return [data_eval.phonebook_book_size_for_length(n, sweep.task, tokenizer) for n in sweep.context_lengths]


def phonebook_sweep(predict_fn: PredictFn, sweep: PhonebookSweep,
                    tokenizer: Tokenizer | str = "byte") -> list[PhonebookPoint]:
  """Scores ``predict_fn`` at every point of ``sweep`` (deterministic: the same sweep gives the same books)."""
  tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
  points = []
  for book_size in _book_sizes(sweep, tokenizer):
    eval_set = data_eval.phonebook_eval_set(num_examples=sweep.num_examples, book_size=book_size, seed=sweep.seed,
                                            task=sweep.task, tokenizer=tokenizer,
                                            pad_to_multiple=sweep.pad_to_multiple)
    total = eval_set.num_queries
    accuracy = data_eval.answer_accuracy(predict_fn, eval_set, batch_size=sweep.batch_size)
    points.append(PhonebookPoint(book_size=book_size, context_len=int(eval_set.lengths.max()),
                                 mean_context_len=float(eval_set.lengths.mean()), correct=round(accuracy * total),
                                 total=total, chance=10.0**-sweep.task.number_len))
  return points


def write_json(path: str, payload: Mapping) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=False)
    f.write("\n")
  return path


def run_phonebook(models: Mapping[str, tuple[Any, Any] | PredictFn], sweep: PhonebookSweep, output_dir: str,
                  tokenizer: Tokenizer | str = "byte", title: str = "Phone-book lookup",
                  extra: Mapping | None = None, train_book_size: int | None = None,
                  on_model_done: Callable[[str, list[PhonebookPoint]], None] | None = None) -> dict:
  """Sweeps every model, writes ``phonebook.json`` and ``phonebook.png`` (accuracy vs context length) in
  ``output_dir``, and returns the JSON payload.

  ``models`` maps a display name to ``(ModelConfig, params)`` or to a predict function. ``extra`` is stored in the
  JSON as it is (e.g. parameter counts, training time). ``train_book_size``: the largest book of training, whose
  context length (when it is a point of the sweep) is marked on the plot: points to its right are longer than any
  training book.
  """
  if not models:
    raise ValueError("run_phonebook: models is empty; give at least one name -> (config, params) or predict function")
  tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
  results = {}
  for name, model in models.items():
    predict = model if callable(model) else model_predict_fn(*model)
    points = phonebook_sweep(predict, sweep, tokenizer)
    results[name] = [p.to_dict() for p in points]
    if on_model_done is not None:
      on_model_done(name, points)
  payload = {"task": "phonebook", "sweep": dataclasses.asdict(sweep), "tokenizer": repr(tokenizer), "models": results,
             **({"extra": dict(extra)} if extra else {})}
  write_json(os.path.join(output_dir, RESULTS_FILE), payload)
  from ssmjax.evaluation import plots  # matplotlib is only needed to draw.

  series = {name: [(p["context_len"], p["accuracy"]) for p in points] for name, points in results.items()}
  trained = [p["context_len"] for p in next(iter(results.values())) if p["book_size"] == train_book_size]
  marker = (trained[0], f"largest training book ({train_book_size} entries)") if trained else None
  plots.plot_accuracy_vs_length(series, os.path.join(output_dir, PLOT_FILE), title=title,
                                chance=10.0**-sweep.task.number_len,
                                xlabel="context length (tokens: book + queries)", marker=marker)
  return payload
