"""Phone-book sweeps (`ssmjax.evaluation.phonebook`): exact accuracy with oracle predictors, JSON + PNG for tiny
models, plots, ``python eval.py phonebook``, and clear errors for bad input."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from ssmjax import count_params, gin_utils
from ssmjax.checkpoint import save_model
from ssmjax.config import AttentionConfig, Mamba2Config, ModelConfig
from ssmjax.data import PhonebookTask, phonebook_eval_set
from ssmjax.evaluation import phonebook, plots
from ssmjax.models.lm import LanguageModel
from ssmjax.tokenizers import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BYTE = load_tokenizer("byte")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASK = PhonebookTask(num_shots=2, num_queries=3)


def _lookup_oracle(wrong_when=lambda name: False):
  """Reads each row as text and, inside a query's answer, predicts the next digit of the name's number from the book
  (the digit + 1 mod 10 when ``wrong_when(name)``); everywhere else it predicts PAD."""

  def predict(inputs: np.ndarray) -> np.ndarray:
    logits = np.zeros((*inputs.shape, BYTE.vocab_size), np.float32)
    logits[..., BYTE.pad_id] = 1.0
    for b, row in enumerate(inputs):
      text = BYTE.decode(row)  # one byte per token: character i is token i.
      book = dict(re.findall(r"^([a-z]+):(\d+)$", text.split("\n\n", 1)[0], re.M))
      for t in range(len(text)):
        match = re.search(r"\?([a-z]+):(\d*)$", text[:t + 1])
        if match and match[1] in book and len(match[2]) < len(book[match[1]]):
          digit = int(book[match[1]][len(match[2])])
          digit = (digit + 1) % 10 if wrong_when(match[1]) else digit
          logits[b, t] = 0.0
          logits[b, t, ord(str(digit))] = 1.0
    return logits

  return predict


def _scored_names(sweep):
  """The names of every scored query of the sweep's books, read from the eval sets independently of the scorer."""
  names = []
  for book_size in sweep.book_sizes:
    eval_set = phonebook_eval_set(num_examples=sweep.num_examples, book_size=book_size, seed=sweep.seed,
                                  task=sweep.task, pad_to_multiple=sweep.pad_to_multiple)
    for row, ids in zip(eval_set.inputs, eval_set.query_ids):
      queries = re.findall(r"\?([a-z]+):", BYTE.decode(row))
      names.append(queries[sweep.task.num_shots:sweep.task.num_shots + sweep.task.num_queries])
      assert ids.max() == sweep.task.num_queries - 1  # scored queries are numbered after the demonstrations.
  return [n for row in names for n in row]


def test_oracle_scores_exactly_one_and_a_wrong_oracle_zero():
  sweep = phonebook.PhonebookSweep(book_sizes=(1, 3, 8), task=TASK, num_examples=5, batch_size=2)
  right = phonebook.phonebook_sweep(_lookup_oracle(), sweep)
  wrong = phonebook.phonebook_sweep(_lookup_oracle(lambda name: True), sweep)
  assert [p.book_size for p in right] == [1, 3, 8]
  assert [(p.correct, p.total) for p in right] == [(15, 15)] * 3
  assert [p.correct for p in wrong] == [0, 0, 0]
  assert all(p.chance == 0.01 for p in right)
  lengths = [p.context_len for p in right]
  assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_partly_wrong_oracle_gives_the_exact_fraction_and_demonstrations_are_not_scored():
  # Given an oracle wrong on every name starting with a..m (scored or demonstration),
  sweep = phonebook.PhonebookSweep(book_sizes=(4, 6), task=TASK, num_examples=7, batch_size=3, seed=5)
  points = phonebook.phonebook_sweep(_lookup_oracle(lambda name: name[0] <= "m"), sweep)
  # then its accuracy is the fraction of *scored* queries whose name starts with n..z, counted from the text.
  names = _scored_names(sweep)
  assert len(names) == sum(p.total for p in points) == 2 * 7 * 3
  assert sum(p.correct for p in points) == sum(name[0] > "m" for name in names)
  assert 0 < sum(p.correct for p in points) < len(names)


def test_context_length_sweep_uses_the_largest_book_that_fits():
  sweep = phonebook.PhonebookSweep(context_lengths=(60, 120, 250), task=TASK, num_examples=3)
  points = phonebook.phonebook_sweep(_lookup_oracle(), sweep)
  for requested, point in zip(sweep.context_lengths, points):
    assert point.context_len <= requested and point.accuracy == 1.0
    bigger = phonebook.PhonebookSweep(book_sizes=(point.book_size + 1,), task=TASK, num_examples=3)
    assert phonebook.phonebook_sweep(_lookup_oracle(), bigger)[0].context_len > requested


def _tiny(pattern: str) -> ModelConfig:
  return ModelConfig(vocab_size=BYTE.vocab_size, d_model=16, pattern=pattern,
                     mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=1, chunk_size=16),
                     attention=AttentionConfig(num_heads=2))


def _params(config: ModelConfig):
  """Random parameters of the model's shapes (``eval_shape``: no compiled init), enough for the plumbing."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      LanguageModel(config).init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def test_run_phonebook_writes_json_and_plot_for_tiny_models(tmp_path):
  models = {name: (config, _params(config)) for name, config in (("Mamba-2", _tiny("MM")), ("hybrid", _tiny("M*")))}
  models["oracle"] = _lookup_oracle()
  sweep = phonebook.PhonebookSweep(book_sizes=(2, 5), task=TASK, num_examples=4, batch_size=4, pad_to_multiple=128)
  payload = phonebook.run_phonebook(models, sweep, str(tmp_path), extra={"note": "tiny"}, train_book_size=2)
  with open(tmp_path / phonebook.RESULTS_FILE) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(payload))
  assert list(written["models"]) == ["Mamba-2", "hybrid", "oracle"] and written["extra"] == {"note": "tiny"}
  assert written["sweep"]["task"]["num_shots"] == 2
  for points in written["models"].values():
    assert [p["book_size"] for p in points] == [2, 5]
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["total"] == 12 for p in points)
  assert [p["accuracy"] for p in written["models"]["oracle"]] == [1.0, 1.0]
  assert (tmp_path / phonebook.PLOT_FILE).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of book_sizes and context_lengths"),
    (dict(book_sizes=(2,), context_lengths=(64,)), "exactly one of book_sizes and context_lengths"),
    (dict(book_sizes=(0, 2)), "book_sizes must hold positive integers"),
    (dict(context_lengths=(64.5,)), "context_lengths must hold positive integers"),
    (dict(book_sizes=(2,), num_examples=0), "num_examples must be >= 1"),
    (dict(book_sizes=(2,), task=PhonebookTask(num_queries=None)), "num_queries must be a number"),
    (dict(book_sizes=(2,), task=PhonebookTask(num_queries=2, query_format="?{name}")), "query_format must contain"),
])
def test_bad_sweeps_are_rejected_with_the_setting_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    phonebook.PhonebookSweep(**kwargs)


def test_bad_points_and_models_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="shorter than a phone book of one entry"):
    phonebook.phonebook_sweep(_lookup_oracle(), phonebook.PhonebookSweep(context_lengths=(10,), task=TASK))
  with pytest.raises(ValueError, match="book_size must be in"):
    phonebook.phonebook_sweep(_lookup_oracle(), phonebook.PhonebookSweep(book_sizes=(26**3 + 1,), task=TASK))
  with pytest.raises(ValueError, match="models is empty"):
    phonebook.run_phonebook({}, phonebook.PhonebookSweep(book_sizes=(2,)), str(tmp_path))


def test_plots_reject_bad_data(tmp_path):
  with pytest.raises(ValueError, match="series is empty"):
    plots.plot_accuracy_vs_length({}, str(tmp_path / "a.png"))
  with pytest.raises(ValueError, match="accuracy in \\[0, 1\\]"):
    plots.plot_accuracy_vs_length({"m": [(64, 1.5)]}, str(tmp_path / "a.png"))
  with pytest.raises(ValueError, match="expected \\(len\\(depths\\), len\\(lengths\\)\\)"):
    plots.plot_needle_heatmap([0.0, 1.0], [64], np.zeros((1, 1)), str(tmp_path / "h.png"))
  assert not os.listdir(tmp_path)


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "eval.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def test_eval_phonebook_command_writes_json_and_plot_and_rejects_bad_flags(tmp_path):
  config = _tiny("M*")
  save_model(str(tmp_path / "hybrid"), config, _params(config))
  out = tmp_path / "out"
  run = _run_cli("phonebook", f"--models=tiny={tmp_path / 'hybrid'}", "--book_sizes=2,4", "--examples_per_point=2",
                 "--num_shots=1", "--num_queries=2", f"--output_dir={out}")
  assert run.returncode == 0, run.stderr[-3000:]
  written = json.loads((out / phonebook.RESULTS_FILE).read_text())
  assert [p["book_size"] for p in written["models"]["tiny"]] == [2, 4]
  assert written["sweep"]["task"]["num_shots"] == 1 and written["models"]["tiny"][0]["total"] == 4
  assert (out / phonebook.PLOT_FILE).read_bytes()[:8] == PNG_MAGIC
  assert "tiny" in run.stdout
  run = _run_cli("phonebook", "--models=nodir", f"--output_dir={out}", "--book_sizes=2")
  assert run.returncode != 0 and "NAME=DIR" in run.stderr


def _gin_macro(name):
  value = gin.query_parameter(f"%{name}")
  if isinstance(value, dict):
    return {k: v.scoped_configurable_fn() for k, v in value.items()}
  return value.scoped_configurable_fn() if isinstance(value, gin.config.ConfigurableReference) else value


def test_paper_mini_config_has_three_models_of_about_equal_size():
  gin.clear_config()
  try:
    gin_utils.parse(["experiments/paper_mini.gin"], finalize=False)
    models, data = _gin_macro("MODELS"), _gin_macro("DATA")
    book_sizes = _gin_macro("BOOK_SIZES")
  finally:
    gin.clear_config()
  assert list(models) == ["Mamba-2", "Transformer", "Mamba-2-Hybrid"]
  kinds = {name: set(config.pattern) for name, config in models.items()}
  assert kinds == {"Mamba-2": {"M"}, "Transformer": {"*", "-"}, "Mamba-2-Hybrid": {"M", "*"}}
  counts = [count_params(config) for config in models.values()]
  assert max(counts) / min(counts) < 1.06, counts
  assert data.tasks == ("phonebook", "mqar", "copying") and max(book_sizes) > data.phonebook.max_book_size


@pytest.mark.slow
def test_paper_mini_command_trains_three_models_and_writes_the_plot(tmp_path):
  run = subprocess.run([sys.executable, "scripts/paper_mini.py", "--gin.NUM_STEPS=3", "--gin.WARMUP_STEPS=1",
                        "--gin.BOOK_SIZES=(1, 8)", "--gin.EVAL_EXAMPLES=2", f"--workdir={tmp_path / 'runs'}",
                        f"--output_dir={tmp_path / 'out'}"],
                       cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                       timeout=1800)
  assert run.returncode == 0, run.stderr[-3000:]
  written = json.loads((tmp_path / "out" / phonebook.RESULTS_FILE).read_text())
  assert list(written["models"]) == ["Mamba-2", "Transformer", "Mamba-2-Hybrid"]
  for name, points in written["models"].items():
    assert [p["book_size"] for p in points] == [1, 8] and all(p["total"] == 8 for p in points)
    assert written["extra"]["runs"][name]["steps"] == 3
  assert (tmp_path / "out" / phonebook.PLOT_FILE).read_bytes()[:8] == PNG_MAGIC
