"""The paper in miniature: train tiny Mamba-2, Transformer and Mamba-2-Hybrid models, plot their phone-book accuracy.

  python scripts/paper_mini.py                       # configs/experiments/paper_mini.gin -> docs/paper_mini/
  python scripts/paper_mini.py --gin.NUM_STEPS=200 --output_dir=/tmp/pm --workdir=/tmp/pm_runs

For each model of the gin file's ``MODELS`` (in order): ``ssmjax.train.train`` on ``DATA`` with ``TRAIN`` in
``<workdir>/<model>`` (a fresh run: an earlier one there is deleted first, unless ``--resume``), then
`ssmjax.evaluation.phonebook.run_phonebook` sweeps every trained model over ``BOOK_SIZES`` and writes
``phonebook.json`` (accuracies, parameter counts, training times, losses, machine load) and ``phonebook.png`` (accuracy
against context length, one line per model) to ``--output_dir``. The library does the work; this file reads gin
and flags and prints.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import sys
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GIN_FILE = "experiments/paper_mini.gin"

_GIN_FILES = flags.DEFINE_multi_string("gin_file", None, f"Gin files, in order (default: {DEFAULT_GIN_FILE}).")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings after the files; --gin.NAME=VALUE is a "
                                          "shorthand.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ssmjax_paper_mini", "Training runs go to <workdir>/<model>.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", os.path.join(REPO, "docs", "paper_mini"), "Where phonebook.json and "
                                  "phonebook.png are written.")
_RESUME = flags.DEFINE_bool("resume", False, "Resume (or reuse) the runs in --workdir instead of starting afresh.")


def _expand_gin_shorthand(argv: list[str]) -> list[str]:
  """``--gin.NAME=VALUE`` -> ``--gin_bindings=NAME = VALUE`` (as train.py)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      arg = f"--gin_bindings={name} = {value}"
    elif arg.startswith("--gin."):
      raise app.UsageError(f"{arg}: the gin shorthand needs a value, --gin.NAME=VALUE")
    out.append(arg)
  return out


def _macro(name: str):
  """The value of gin macro ``name``, with configurable references (``@ssmjax.X()``) called."""
  import gin

  def evaluate(value):
    if isinstance(value, gin.config.ConfigurableReference):
      return value.scoped_configurable_fn()
    if isinstance(value, dict):
      return {k: evaluate(v) for k, v in value.items()}
    return value

  try:
    return evaluate(gin.query_parameter(f"%{name}"))
  except ValueError as e:
    raise ValueError(f"the gin files do not bind the macro {name} (see {DEFAULT_GIN_FILE})") from e


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_").lower()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax

  from ssmjax import count_params, gin_utils
  from ssmjax.evaluation import phonebook
  from ssmjax.train import train

  started, load_start = time.time(), os.getloadavg()
  gin_utils.parse(_GIN_FILES.value or [DEFAULT_GIN_FILE], _GIN_BINDINGS.value, finalize=False)
  models, data, train_config, mesh = _macro("MODELS"), _macro("DATA"), _macro("TRAIN"), _macro("MESH")
  task = dataclasses.replace(data.phonebook, num_shots=_macro("EVAL_NUM_SHOTS"), num_queries=_macro("EVAL_NUM_QUERIES"))
  sweep = phonebook.PhonebookSweep(book_sizes=tuple(_macro("BOOK_SIZES")), task=task,
                                   num_examples=_macro("EVAL_EXAMPLES"), seed=_macro("EVAL_SEED"))
  print(f"paper_mini: {len(models)} models, {train_config.num_steps} steps each, on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s); load average {load_start[0]:.1f}", flush=True)

  trained, runs = {}, {}
  for name, config in models.items():
    workdir = os.path.join(_WORKDIR.value, _slug(name))
    if not _RESUME.value and os.path.exists(workdir):
      shutil.rmtree(workdir)
    n_params = count_params(config)
    print(f"[{name}] {n_params:,} parameters, pattern {config.pattern!r}: training in {workdir}", flush=True)
    t0 = time.time()
    result = train(config, data, train_config, mesh, workdir=workdir)
    seconds = time.time() - t0
    losses = [(r["step"], round(r["loss"], 4)) for r in result.metrics]
    print(f"[{name}] {result.step} steps in {seconds:.0f} s; loss {losses[0][1] if losses else '-'} -> "
          f"{losses[-1][1] if losses else '-'}", flush=True)
    trained[name] = (config, jax.device_get(result.state.params))
    runs[name] = {"parameters": n_params, "pattern": config.pattern, "train_seconds": round(seconds, 1),
                  "steps": result.step, "losses": losses, "model_dir": result.model_dir}

  def report(name, points):
    row = ", ".join(f"book {p.book_size} ({p.context_len} tok): {100 * p.accuracy:.1f}%" for p in points)
    print(f"[{name}] phone-book accuracy: {row}", flush=True)

  t0 = time.time()
  extra = {"runs": runs, "gin_files": _GIN_FILES.value or [DEFAULT_GIN_FILE], "gin_bindings": _GIN_BINDINGS.value,
           "data": dataclasses.asdict(data), "train_seq_len": data.seq_len,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}",
           "load_average_start": [round(x, 2) for x in load_start]}
  sizes = ", ".join(f"{name} {r['parameters'] / 1e3:.0f}K" for name, r in runs.items())
  title = f"Phone-book lookup after {train_config.num_steps} steps ({sizes} parameters)"
  payload = phonebook.run_phonebook(trained, sweep, _OUTPUT_DIR.value, data.tokenizer, title=title, extra=extra,
                                    train_book_size=data.phonebook.max_book_size, on_model_done=report)
  eval_seconds, total = time.time() - t0, time.time() - started
  payload["extra"].update(eval_seconds=round(eval_seconds, 1), total_seconds=round(total, 1),
                          load_average_end=[round(x, 2) for x in os.getloadavg()])
  phonebook.write_json(os.path.join(_OUTPUT_DIR.value, phonebook.RESULTS_FILE), payload)
  print(f"evaluation {eval_seconds:.0f} s; total {total / 60:.1f} min; wrote "
        f"{os.path.join(_OUTPUT_DIR.value, phonebook.RESULTS_FILE)} and {phonebook.PLOT_FILE}")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, REPO)  # ssmjax from this checkout when it is not installed.
  app.run(main, flags_parser=lambda argv: flags.FLAGS(_expand_gin_shorthand(argv)))
