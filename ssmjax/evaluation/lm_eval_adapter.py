"""An lm-evaluation-harness model named ``ssmjax``: any harness task on an ssmjax model.

  python eval.py lm_eval --checkpoint DIR --tasks hellaswag,piqa [--num_fewshot 0 --limit 100]
  python -m ssmjax.evaluation.lm_eval_adapter --model ssmjax --model_args checkpoint=DIR,tokenizer=PATH --tasks ...
  lm_eval --model ssmjax --model_args checkpoint=DIR ...     # lm-eval releases that load plugins (see below)

How lm-eval finds the model. Importing this module registers `SSMJaxLM` as ``ssmjax`` (lm-eval's ``register_model``).
The ``lm_eval`` command of lm-eval 0.4.13 (the newest release on PyPI when this was written) knows only its own
models and imports no third-party code, so there ``--model ssmjax`` works through ``python -m
ssmjax.evaluation.lm_eval_adapter`` (or the ``ssmjax-lm-eval`` script that ``pip install -e .`` creates): it registers
the model, then runs lm-eval's own command line with the same arguments. ssmjax also declares the entry point
``ssmjax`` in the ``lm_eval.models`` group (pyproject.toml), which lm-eval versions with plugin discovery (lm-eval PR
#4013, 2026) load by themselves: there plain ``lm_eval --model ssmjax`` works, and so does ``--plugins
ssmjax.evaluation.lm_eval_adapter``. ``--include_path`` only adds task YAMLs; it cannot register a model.

Requests (model arguments: ``checkpoint``, ``tokenizer``, ``batch_size``, ``max_length``, ``max_gen_toks``):

  loglikelihood          log p(continuation | context) and whether greedy decoding gives the continuation: the
                         context and continuation are tokenized together and split (lm-eval's `TemplateLM`), then
                         scored by one forward pass over both (`ssmjax.evaluation.scoring.TokenScorer`: batched,
                         lengths bucketed, the earliest context dropped beyond ``max_length`` tokens). An empty
                         context is replaced by the EOD token.
  loglikelihood_rolling  the whole text given EOD, in lm-eval's rolling windows of ``max_length`` tokens.
  generate_until         ``ssmjax.generate`` (prefill, then the compiled decode loop with the cache), prompts left-
                         padded to power-of-two buckets, then cut at the first ``until`` string. ``gen_kwargs``:
                         ``until``, ``max_gen_toks``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``; others
                         raise ValueError. Greedy unless ``do_sample``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ssmjax.config import ModelConfig
from ssmjax.evaluation.loading import check_tokenizer_fits, load_checkpoint
from ssmjax.evaluation.scoring import ScoreRequest, TokenScorer
from ssmjax.tokenizers import load_tokenizer

MODEL_NAME = "ssmjax"
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
_log = logging.getLogger(__name__)


def _positive_int(name: str, value: Any) -> int:
  """An int from a model argument (lm-eval passes strings or numbers); ValueError naming ``name`` otherwise."""
  try:
    number = int(value)
  except (TypeError, ValueError):
    number = None
  if isinstance(value, bool) or number is None or number != float(value) or number < 1:
    raise ValueError(f"ssmjax model argument {name} must be a positive integer, got {value!r}")
  return number


def _bucket(length: int) -> int:
  return max(16, 1 << max(0, length - 1).bit_length())


class SSMJaxLM(TemplateLM):
  """lm-eval's view of an ssmjax model (see the module docstring).

  Args:
    checkpoint: an ssmjax or HuggingFace model directory (`ssmjax.evaluation.loading.load_checkpoint`); or give
      ``config`` and ``params`` (Python use, e.g. `run_lm_eval`).
    tokenizer: ``"byte"``, a SentencePiece ``.model``, a ``tokenizer.json`` or a directory (`ssmjax.tokenizers`);
      or a tokenizer object.
    batch_size: sequences per forward pass / per generate call.
    max_length: the most tokens the model sees at once (context is cut from the left beyond it).
    max_gen_toks: tokens generated when a request's ``gen_kwargs`` give no ``max_gen_toks``.
    seed: the sampling seed of ``do_sample`` requests.
    max_batch_size, device: passed by lm-eval to every model; ignored (JAX places the computation).
  """

  def __init__(self, checkpoint: str | None = None, tokenizer: Any = "byte", batch_size: Any = 8,
               max_length: Any = 4096, max_gen_toks: Any = 256, seed: Any = 0, *, config: ModelConfig | None = None,
               params: Any = None, max_batch_size: Any = None, device: Any = None):
    super().__init__()
    del max_batch_size  # lm-eval's "auto" batch size search is not supported.
    if device is not None:
      _log.info("ssmjax: ignoring device=%r; JAX chooses the devices", device)
    if (checkpoint is None) == (config is None):
      raise ValueError("ssmjax model: give model_args checkpoint=DIR (or, in Python, config and params), not both")
    if checkpoint is not None:
      config, params = load_checkpoint(str(checkpoint))
    elif params is None:
      raise ValueError("ssmjax model: config given without params")
    self._tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    check_tokenizer_fits(self._tokenizer, config)
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
      raise ValueError("ssmjax model argument batch_size must be a positive integer; 'auto' is not supported")
    self.config, self.params = config, params
    self._batch_size = _positive_int("batch_size", 1 if batch_size is None else batch_size)
    self._max_length = _positive_int("max_length", max_length)
    self._max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
    self._seed = int(seed)
    self._scorer = TokenScorer(config, params, batch_size=self._batch_size, max_length=self._max_length,
                               pad_id=self._tokenizer.pad_id)

  # -- what TemplateLM needs ----------------------------------------------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return self._tokenizer.eos_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def tokenizer_name(self) -> str:
    return repr(self._tokenizer)

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    del add_special_tokens, kwargs  # ssmjax tokenizers add no special tokens.
    return list(self._tokenizer.encode(string))

  def tok_decode(self, tokens: Sequence[int]) -> str:
    return self._tokenizer.decode(list(tokens))

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
    """``[((context, continuation), context_ids, continuation_ids)]`` -> ``[(log p, is_greedy)]``."""
    del disable_tqdm, kwargs
    scored = [i for i, (_, _, cont) in enumerate(requests) if cont]
    results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)  # an empty continuation has probability 1
    outputs = self._scorer.score([ScoreRequest(list(requests[i][1]) + list(requests[i][2]), len(requests[i][2]))
                                  for i in scored])
    for i, scores in zip(scored, outputs):
      results[i] = (scores.logprob, scores.is_greedy)
      self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    windows, owners = [], []
    for index, request in enumerate(requests):
      (text,) = request.args
      for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
          token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
          context_len=1)):
        windows.append(ScoreRequest(list(context) + list(continuation), len(continuation)))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, scores in zip(owners, self._scorer.score(windows)):
      totals[owner] += scores.logprob
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    parsed = [self._generation_request(i, r.args[0], r.args[1]) for i, r in enumerate(requests)]
    outputs: list[str | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, (_, _, settings) in enumerate(parsed):
      groups.setdefault(settings, []).append(i)
    for settings, members in groups.items():
      max_new, temperature, top_k, top_p = settings
      members.sort(key=lambda i: -len(parsed[i][0]))
      for start in range(0, len(members), self.batch_size):
        chunk = members[start:start + self.batch_size]
        prompts = [parsed[i][0] for i in chunk]
        prompts += [prompts[-1]] * (self.batch_size - len(prompts))  # a fixed batch: one program per bucket
        texts = self._generate(prompts, max_new, temperature, top_k, top_p)
        for i, text in zip(chunk, texts):
          outputs[i] = _cut_at_stops(text, parsed[i][1])
          self.cache_hook.add_partial("generate_until", requests[i].args, outputs[i])
    return outputs  # type: ignore[return-value]

  # -- generation helpers -------------------------------------------------------------------------------------------

  def _generation_request(self, index: int, context: str, gen_kwargs: dict) -> tuple[list[int], list[str], tuple]:
    """(prompt ids, stop strings, (max_new_tokens, temperature, top_k, top_p)) of one generate_until request."""
    gen_kwargs = dict(gen_kwargs or {})
    unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
    if unknown:
      raise ValueError(f"generate_until request {index}: unsupported gen_kwargs {unknown}; the ssmjax model "
                       f"supports {list(GEN_KWARGS)}")
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    max_new = _positive_int("max_gen_toks", gen_kwargs.get("max_gen_toks", self.max_gen_toks))
    if max_new >= self.max_length:
      raise ValueError(f"generate_until request {index}: max_gen_toks ({max_new}) must be below max_length "
                       f"({self.max_length})")
    sample = bool(gen_kwargs.get("do_sample", False))
    temperature = float(gen_kwargs.get("temperature", 1.0 if sample else 0.0)) if sample else 0.0
    top_k = gen_kwargs.get("top_k") if sample else None
    top_p = gen_kwargs.get("top_p") if sample else None
    prompt = self.tok_encode(context) or [self.prefix_token_id]
    prompt = prompt[-(self.max_length - max_new):]  # keep the latest context, as lm-eval's HF model does
    return prompt, until, (max_new, temperature, None if top_k is None else int(top_k),
                           None if top_p is None else float(top_p))

  def _generate(self, prompts: list[list[int]], max_new: int, temperature: float, top_k: int | None,
                top_p: float | None) -> list[str]:
    from ssmjax.generate import generate  # the module, not the ssmjax.generate function re-export

    width = min(_bucket(max(len(p) for p in prompts)), self.max_length - max_new)
    out = generate(self.config, self.params, prompts, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                   eos_id=self.eot_token_id, seed=self._seed, pad_to=width)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    texts = []
    for row in range(len(prompts)):
      ids = [int(t) for t in tokens[row, :lengths[row]] if int(t) != self.eot_token_id]
      texts.append(self.tok_decode(ids))
    return texts


if __name__ != "__main__":
  # Run as ``python -m``, this file is imported a second time under its package name (by `main`), and lm-eval allows
  # one class per name: only the importable module registers (as the lm_eval.models entry point names it).
  register_model(MODEL_NAME)(SSMJaxLM)


def _cut_at_stops(text: str, until: Sequence[str]) -> str:
  """``text`` up to the earliest occurrence of any stop string."""
  cut = min((text.find(stop) for stop in until if stop and stop in text), default=len(text))
  return text[:cut]


def unknown_tasks(tasks: Sequence[str], task_manager: Any) -> list[str]:
  """The names in ``tasks`` that are neither lm-eval tasks / groups / tags (glob patterns allowed) nor files."""
  known = set(task_manager.all_tasks)
  return [t for t in tasks if not os.path.isfile(t) and t not in known and not task_manager.match_tasks([t])]


def run_lm_eval(config: ModelConfig, params: Any, tokenizer: Any, tasks: Sequence[str], *,
                num_fewshot: int | None = None, limit: float | None = None, include_path: str | None = None,
                batch_size: int = 8, max_length: int = 4096, max_gen_toks: int = 256, seed: int = 0,
                bootstrap_iters: int = 0, log_samples: bool = False, include_defaults: bool = True) -> dict:
  """Runs lm-eval ``tasks`` on the model with `lm_eval.simple_evaluate`; its JSON-able result dict.

  ``include_path``: a directory of extra task YAMLs; ``include_defaults=False`` leaves out lm-eval's own tasks (indexing
  its ~15k task files takes seconds). ``limit``: examples per task (a fraction if < 1).
  ``bootstrap_iters``: 0 skips the standard-error bootstrap. The result holds ``results``, ``versions``,
  ``n-shot``, ``higher_is_better`` and ``config`` (``samples`` too with ``log_samples``).

  Raises:
    ValueError: no tasks, or task names lm-eval does not know (the message names them).
  """
  import lm_eval
  from lm_eval.tasks import TaskManager

  tasks = [t for t in tasks if t]
  if not tasks:
    raise ValueError("lm_eval: no tasks given (e.g. --tasks hellaswag,piqa)")
  if include_path is not None and not os.path.isdir(include_path):
    raise FileNotFoundError(f"lm_eval include_path {include_path!r} is not a directory")
  task_manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
  missing = unknown_tasks(tasks, task_manager)
  if missing:
    searched = (["lm-eval's own tasks, groups and tags"] if include_defaults else []) + (
        [f"the task YAMLs of include_path {include_path!r}"] if include_path else [])
    hint = "" if include_path else " (local task YAMLs: pass include_path)"
    raise ValueError(f"lm_eval: unknown task(s) {missing}: not found in {' or '.join(searched) or 'no task source'}"
                     f"{hint}; `lm-eval ls tasks` lists lm-eval's")
  model = SSMJaxLM(config=config, params=params, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                   max_gen_toks=max_gen_toks, seed=seed)
  results = lm_eval.simple_evaluate(model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                    task_manager=task_manager, bootstrap_iters=bootstrap_iters,
                                    log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
                                    torch_random_seed=None, fewshot_random_seed=seed)  # None: torch not imported
  keep = ("results", "groups", "versions", "n-shot", "higher_is_better", "n-samples", "config", "samples")
  return {k: results[k] for k in keep if k in results}


def main(argv: Sequence[str] | None = None) -> None:
  """lm-eval's own command line with the ``ssmjax`` model registered (this module's import does that)."""
  from lm_eval.__main__ import cli_evaluate

  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  cli_evaluate()


if __name__ == "__main__":
  from ssmjax.evaluation.lm_eval_adapter import main as registered_main  # registers "ssmjax"

  registered_main()

