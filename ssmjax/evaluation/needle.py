"""Passkey / needle-in-a-haystack retrieval over context lengths and insertion depths.

Each example is a haystack of filler text with one needle sentence holding a random key inserted at a chosen depth,
then a question whose answer is the key::

  <filler ...> The pass key is 48213. Remember it. 48213 is the pass key. <filler ...>
  What is the pass key? The pass key is 48213.
                                        ^^^^^ scored

The whole example has exactly ``context_len`` input tokens: the haystack is cut (in tokens) to fill what the needle
and question leave, and the needle goes in at the sentence boundary nearest ``depth`` x the haystack (0: first,
1: just before the question). A key counts as retrieved when every one of its tokens is the model's argmax given the
true prefix (`ssmjax.data.answer_accuracy`; for one answer this is exactly greedy decoding). The haystack is the
built-in filler (`FILLER`, sentences cycled from a seeded start) or the sentences of a given text file; keys and
starts derive from (seed, length, depth, example) only, so a sweep is deterministic.

  sweep = NeedleSweep(context_lengths=(256, 512, 1024), depths=(0.0, 0.5, 1.0))
  cells = needle_sweep(model_predict_fn(config, params), sweep)             # accuracy[depth][length]
  report = run_needle({"my model": (config, params)}, sweep, output_dir="/tmp/needle")   # JSON + heatmap PNGs
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np

from ssmjax.data import evaluation as data_eval
from ssmjax.data.synthetic import PROMPT
from ssmjax.evaluation.phonebook import PredictFn, model_predict_fn, write_json
from ssmjax.tokenizers import Tokenizer, load_tokenizer

RESULTS_FILE = "needle.json"
_NEEDLE_DOMAIN = 0x4EED1E  # Keeps needle randomness apart from other evaluation streams.

# The built-in haystack: plain sentences with no digits, so that nothing in it looks like a key.
FILLER = (
    "The river bends twice before it reaches the old mill.",
    "A light rain fell on the market all afternoon.",
    "Nobody in the village remembered who planted the oak by the school.",
    "The baker opens his shop before the first bus arrives.",
    "Clouds gathered over the hills and then drifted east.",
    "The library keeps its maps in a cabinet near the window.",
    "Every spring the fields turn yellow with mustard flowers.",
    "A small boat waited at the pier with its sail folded.",
    "The clock in the square runs a little slow in winter.",
    "Children chased a kite along the beach until sunset.",
    "The road to the coast is quiet on weekday mornings.",
    "An old cat sleeps on the steps of the post office.",
)


@dataclasses.dataclass(frozen=True)
class NeedleTask:
  """The needle and question text; ``{key}`` is replaced by ``key_len`` random digits."""

  key_len: int = 5
  needle_format: str = " The pass key is {key}. Remember it. {key} is the pass key."
  question_format: str = "\nWhat is the pass key? The pass key is {key}."  # the text from {key} on is the answer.

  def validate(self) -> None:
    if not 1 <= self.key_len <= 18:
      raise ValueError(f"NeedleTask.key_len must be in [1, 18], got {self.key_len}")
    if "{key}" not in self.needle_format:
      raise ValueError(f"NeedleTask.needle_format must contain {{key}}, got {self.needle_format!r}")
    if self.question_format.count("{key}") != 1:
      raise ValueError(f"NeedleTask.question_format must contain {{key}} once, got {self.question_format!r}")


@dataclasses.dataclass(frozen=True)
class NeedleSweep:
  """A grid of context lengths (input tokens) x insertion depths (fractions of the haystack), and how it is scored."""

  context_lengths: tuple[int, ...] = (128, 256, 512)
  depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  task: NeedleTask = NeedleTask()
  num_examples: int = 8  # examples (keys) per cell.
  seed: int = 0
  haystack_file: str | None = None  # a UTF-8 text file whose sentences replace the built-in FILLER.
  batch_size: int = 8  # rows per model call (one compile per context length).

  def __post_init__(self):
    if not self.context_lengths or any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1
                                       for n in self.context_lengths):
      raise ValueError(f"NeedleSweep.context_lengths must be a non-empty tuple of positive integers, got "
                       f"{self.context_lengths!r}")
    if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
      raise ValueError(f"NeedleSweep.depths must be a non-empty tuple of fractions in [0, 1], got {self.depths!r}")
    if self.num_examples < 1 or self.batch_size < 1:
      raise ValueError(f"NeedleSweep.num_examples and batch_size must be >= 1, got {self.num_examples}, "
                       f"{self.batch_size}")
    self.task.validate()


def load_haystack(path: str | None) -> tuple[str, ...]:
  """The filler sentences: `FILLER`, or the sentences of the text file ``path`` (split after . ! ? and at lines)."""
  if path is None:
    return FILLER
  if not os.path.isfile(path):
    raise FileNotFoundError(f"haystack_file {path!r} does not exist (expected a UTF-8 text file)")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  sentences = tuple(s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip())
  if not sentences:
    raise ValueError(f"haystack_file {path!r} has no text")
  return sentences


def _rng(sweep: NeedleSweep, context_len: int, depth_index: int, example: int) -> np.random.Generator:
  return np.random.default_rng([sweep.seed % 2**63, context_len, depth_index, example, _NEEDLE_DOMAIN])


def needle_example(rng: np.random.Generator, context_len: int, depth: float, task: NeedleTask,
                   sentences: tuple[str, ...], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, float]:
  """(tokens [context_len + 1], query ids (0 on the key's tokens, PROMPT elsewhere), the depth achieved)."""
  key = "".join(str(d) for d in rng.integers(0, 10, size=task.key_len))
  needle = tokenizer.encode(task.needle_format.format(key=key))
  prefix, suffix = task.question_format.split("{key}", 1)
  question, answer, after = tokenizer.encode(prefix), tokenizer.encode(key), tokenizer.encode(suffix)
  budget = context_len + 1 - len(needle) - len(question) - len(answer) - len(after)
  if budget < 0:
    needed = len(needle) + len(question) + len(answer) + len(after) - 1
    raise ValueError(f"context_len={context_len} is too short for the needle and question alone ({needed} input "
                     "tokens)")
  haystack, boundaries = [], [0]  # boundaries: token offsets where a sentence starts (or the haystack ends).
  start = int(rng.integers(len(sentences)))
  i = 0
  while len(haystack) < budget:
    sentence = tokenizer.encode((" " if haystack else "") + sentences[(start + i) % len(sentences)])
    if not sentence:
      raise ValueError("the haystack sentences encode to no tokens")
    haystack += sentence
    boundaries.append(min(len(haystack), budget))
    i += 1
  haystack = haystack[:budget]
  cut = min(boundaries, key=lambda b: (abs(b - depth * budget), b))
  pieces = [(haystack[:cut], PROMPT), (needle, PROMPT), (haystack[cut:], PROMPT), (question, PROMPT), (answer, 0),
            (after, PROMPT)]
  tokens = np.concatenate([np.asarray(p, np.int32) for p, _ in pieces])
  query_ids = np.concatenate([np.full(len(p), q, np.int32) for p, q in pieces])
  return tokens, query_ids, (cut / budget if budget else depth)


def needle_eval_set(sweep: NeedleSweep, context_len: int, depth_index: int,
                    tokenizer: Tokenizer) -> tuple[data_eval.EvalSet, float]:
  """The examples of one cell as teacher-forcing rows, and the mean depth actually achieved."""
  sentences = load_haystack(sweep.haystack_file)
  rows, ids, achieved = [], [], []
  for example in range(sweep.num_examples):
    tokens, query_ids, depth = needle_example(_rng(sweep, context_len, depth_index, example), context_len,
                                              sweep.depths[depth_index], sweep.task, sentences, tokenizer)
    rows.append(tokens)
    ids.append(query_ids)
    achieved.append(depth)
  tokens, query_ids = np.stack(rows), np.stack(ids)
  eval_set = data_eval.EvalSet(inputs=tokens[:, :-1], targets=tokens[:, 1:], query_ids=query_ids[:, 1:],
                               lengths=np.full(len(rows), context_len, np.int32))
  return eval_set, float(np.mean(achieved))


def needle_sweep(predict_fn: PredictFn, sweep: NeedleSweep, tokenizer: Tokenizer | str = "byte") -> dict:
  """Scores ``predict_fn`` on every cell: ``{"accuracy": [[depth][length]], "achieved_depths": ..., ...}``."""
  tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
  accuracy = np.zeros((len(sweep.depths), len(sweep.context_lengths)))
  achieved = np.zeros_like(accuracy)
  for j, context_len in enumerate(sweep.context_lengths):
    for i in range(len(sweep.depths)):
      eval_set, achieved[i, j] = needle_eval_set(sweep, context_len, i, tokenizer)
      accuracy[i, j] = data_eval.answer_accuracy(predict_fn, eval_set, batch_size=sweep.batch_size)
  return {"depths": list(sweep.depths), "context_lengths": list(sweep.context_lengths),
          "accuracy": accuracy.tolist(), "achieved_depths": achieved.round(4).tolist(),
          "mean_accuracy": float(accuracy.mean()), "examples_per_cell": sweep.num_examples,
          "chance": 10.0**-sweep.task.key_len}


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def run_needle(models: Mapping[str, tuple[Any, Any] | PredictFn], sweep: NeedleSweep, output_dir: str,
               tokenizer: Tokenizer | str = "byte", title: str = "Needle retrieval") -> dict:
  """Sweeps every model; writes ``needle.json``, a heatmap ``needle_<model>.png`` per model and, with several
  context lengths, ``needle_by_length.png`` (accuracy averaged over depths vs length); returns the JSON payload."""
  if not models:
    raise ValueError("run_needle: models is empty; give at least one name -> (config, params) or predict function")
  tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
  load_haystack(sweep.haystack_file)  # a missing file fails before any model runs.
  from ssmjax.evaluation import plots  # matplotlib is only needed to draw.

  results, plot_files = {}, {}
  for name, model in models.items():
    predict = model if callable(model) else model_predict_fn(*model)
    results[name] = needle_sweep(predict, sweep, tokenizer)
    plot_files[name] = f"needle_{_slug(name)}.png"
    plots.plot_needle_heatmap(sweep.depths, sweep.context_lengths, np.asarray(results[name]["accuracy"]),
                              os.path.join(output_dir, plot_files[name]), title=f"{title}: {name}")
  if len(sweep.context_lengths) > 1:
    series = {name: list(zip(r["context_lengths"], np.mean(r["accuracy"], axis=0))) for name, r in results.items()}
    plots.plot_accuracy_vs_length(series, os.path.join(output_dir, "needle_by_length.png"), title=title,
                                  chance=10.0**-sweep.task.key_len)
    plot_files["by_length"] = "needle_by_length.png"
  payload = {"task": "needle", "sweep": dataclasses.asdict(sweep), "tokenizer": repr(tokenizer), "models": results,
             "plots": plot_files}
  write_json(os.path.join(output_dir, RESULTS_FILE), payload)
  return payload
