"""Needle / passkey retrieval (`ssmjax.evaluation.needle`): example layout, exact accuracy with oracle predictors,
haystack files, JSON + heatmaps for a tiny model, ``python eval.py needle``, and clear errors for bad input."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from ssmjax.checkpoint import save_model
from ssmjax.config import AttentionConfig, Mamba2Config, ModelConfig
from ssmjax.data.synthetic import PROMPT
from ssmjax.evaluation import needle
from ssmjax.models.lm import LanguageModel
from ssmjax.tokenizers import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BYTE = load_tokenizer("byte")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NEEDLE = re.compile(r"The pass key is (\d+)\. Remember it\.")
QUESTION = re.compile(r"What is the pass key\? The pass key is (\d*)$")


def _key_oracle(wrong_when=lambda depth: False):
  """Finds the key in the needle and, inside the answer, predicts its next digit (the digit + 1 mod 10 when
  ``wrong_when(depth)``, the needle's offset over the haystack's length); PAD elsewhere."""

  def predict(inputs: np.ndarray) -> np.ndarray:
    logits = np.zeros((*inputs.shape, BYTE.vocab_size), np.float32)
    logits[..., BYTE.pad_id] = 1.0
    for b, row in enumerate(inputs):
      text = BYTE.decode(row)
      found = NEEDLE.search(text)
      question_start = text.rindex("\nWhat is the pass key?")
      if found:
        needle_text = needle.NeedleTask().needle_format.format(key=found[1])
        depth = text.index(needle_text) / (question_start - len(needle_text))
      for t in range(question_start, len(text)):
        match = QUESTION.search(text[:t + 1])
        if found and match and len(match[1]) < len(found[1]):
          digit = int(found[1][len(match[1])])
          digit = (digit + 1) % 10 if wrong_when(depth) else digit
          logits[b, t] = 0.0
          logits[b, t, ord(str(digit))] = 1.0
    return logits

  return predict


@pytest.mark.parametrize("context_len", [180, 260, 333])
def test_examples_have_exact_length_the_key_scored_and_the_needle_at_its_depth(context_len):
  rng_seed = np.random.SeedSequence(context_len)
  for depth in (0.0, 0.3, 1.0):
    tokens, query_ids, achieved = needle.needle_example(np.random.default_rng(rng_seed), context_len, depth,
                                                        needle.NeedleTask(), needle.FILLER, BYTE)
    text = BYTE.decode(tokens)
    assert len(tokens) == len(query_ids) == context_len + 1
    key = NEEDLE.search(text)[1]
    assert text.endswith(f"What is the pass key? The pass key is {key}.")
    scored = np.flatnonzero(query_ids != PROMPT)
    assert BYTE.decode(tokens[scored]) == key and np.all(query_ids[scored] == 0)
    assert scored[-1] == context_len - 1  # the key's last digit, then the final "."
    haystack = len(tokens) - len(BYTE.encode(needle.NeedleTask().needle_format.format(key=key))) - len(
        BYTE.encode("\nWhat is the pass key? The pass key is .")) - len(key)
    longest_sentence = max(len(s) for s in needle.FILLER) + 1
    assert abs(achieved - depth) * haystack <= longest_sentence / 2 + 1
    if depth == 0.0:
      assert text.startswith(" The pass key is")
    if depth == 1.0:
      assert re.search(r"is the pass key\.\nWhat is the pass key\?", text)


def test_oracle_scores_one_a_wrong_oracle_zero_and_a_depth_dependent_oracle_its_cells():
  sweep = needle.NeedleSweep(context_lengths=(300, 600), depths=(0.0, 0.25, 0.75, 1.0), num_examples=3, batch_size=2)
  assert needle.needle_sweep(_key_oracle(), sweep)["accuracy"] == [[1.0, 1.0]] * 4
  assert needle.needle_sweep(_key_oracle(lambda depth: True), sweep)["mean_accuracy"] == 0.0
  # Given an oracle that only retrieves needles in the first half of the haystack,
  result = needle.needle_sweep(_key_oracle(lambda depth: depth > 0.5), sweep)
  # then exactly the shallow cells are right.
  assert result["accuracy"] == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
  assert result["chance"] == 1e-5 and result["examples_per_cell"] == 3


def test_sweeps_are_deterministic_in_the_seed():
  sweep = needle.NeedleSweep(context_lengths=(120,), depths=(0.5,), num_examples=4)
  first, _ = needle.needle_eval_set(sweep, 120, 0, BYTE)
  again, _ = needle.needle_eval_set(sweep, 120, 0, BYTE)
  other, _ = needle.needle_eval_set(needle.NeedleSweep(context_lengths=(120,), depths=(0.5,), num_examples=4, seed=1),
                                    120, 0, BYTE)
  np.testing.assert_array_equal(first.inputs, again.inputs)
  assert not np.array_equal(first.inputs, other.inputs)
  keys = {NEEDLE.search(BYTE.decode(row))[1] for row in first.inputs}
  assert len(keys) == 4  # a fresh key per example.


def test_haystack_file_sentences_replace_the_filler(tmp_path):
  book = tmp_path / "book.txt"
  book.write_text("Alpha beta gamma.  Delta epsilon!\nZeta eta theta? Iota kappa\n\nLambda mu.\n")
  assert needle.load_haystack(str(book)) == ("Alpha beta gamma.", "Delta epsilon!", "Zeta eta theta?", "Iota kappa",
                                            "Lambda mu.")
  sweep = needle.NeedleSweep(context_lengths=(300,), depths=(0.5,), num_examples=2, haystack_file=str(book))
  eval_set, _ = needle.needle_eval_set(sweep, 300, 0, BYTE)
  text = BYTE.decode(eval_set.inputs[0])  # ~200 haystack tokens: every sentence of the file, cycled.
  assert all(s in text for s in needle.load_haystack(str(book))) and "river" not in text
  assert needle.needle_sweep(_key_oracle(), sweep)["mean_accuracy"] == 1.0


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


def test_run_needle_writes_json_and_heatmaps_for_a_tiny_model(tmp_path):
  config = _tiny("M*")
  params = _params(config)
  sweep = needle.NeedleSweep(context_lengths=(128, 160), depths=(0.0, 1.0), num_examples=2)
  payload = needle.run_needle({"tiny hybrid": (config, params), "oracle": _key_oracle()}, sweep, str(tmp_path))
  written = json.loads((tmp_path / needle.RESULTS_FILE).read_text())
  assert written == json.loads(json.dumps(payload))
  assert written["plots"] == {"tiny hybrid": "needle_tiny_hybrid.png", "oracle": "needle_oracle.png",
                              "by_length": "needle_by_length.png"}
  for name in written["plots"].values():
    assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
  tiny = written["models"]["tiny hybrid"]
  assert np.shape(tiny["accuracy"]) == (2, 2) and all(0.0 <= a <= 1.0 for row in tiny["accuracy"] for a in row)
  assert written["models"]["oracle"]["mean_accuracy"] == 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(context_lengths=()), "context_lengths must be a non-empty tuple of positive integers"),
    (dict(context_lengths=(0,)), "context_lengths must be a non-empty tuple of positive integers"),
    (dict(depths=(0.5, 1.5)), "depths must be a non-empty tuple of fractions in \\[0, 1\\]"),
    (dict(num_examples=0), "num_examples and batch_size must be >= 1"),
    (dict(task=needle.NeedleTask(key_len=0)), "key_len must be in"),
    (dict(task=needle.NeedleTask(question_format="What?")), "question_format must contain {key} once"),
])
def test_bad_sweeps_are_rejected_with_the_setting_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    needle.NeedleSweep(**kwargs)


def test_bad_lengths_and_haystack_files_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="context_len=40 is too short for the needle and question alone"):
    needle.needle_sweep(_key_oracle(), needle.NeedleSweep(context_lengths=(40,), depths=(0.5,)))
  with pytest.raises(FileNotFoundError, match="haystack_file .*missing.txt"):
    needle.run_needle({"oracle": _key_oracle()}, needle.NeedleSweep(haystack_file=str(tmp_path / "missing.txt")),
                      str(tmp_path))
  (tmp_path / "blank.txt").write_text(" \n\n ")
  with pytest.raises(ValueError, match="has no text"):
    needle.load_haystack(str(tmp_path / "blank.txt"))


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "eval.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def test_eval_needle_command_writes_json_and_heatmap_and_rejects_bad_flags(tmp_path):
  config = _tiny("M*")
  params = _params(config)
  save_model(str(tmp_path / "tiny"), config, params)
  out = tmp_path / "out"
  run = _run_cli("needle", f"--checkpoint={tmp_path / 'tiny'}", "--context_lengths=160", "--depths=0,1",
                 "--examples_per_point=2", f"--output_dir={out}")
  assert run.returncode == 0, run.stderr[-3000:]
  written = json.loads((out / needle.RESULTS_FILE).read_text())
  assert written["models"]["tiny"]["depths"] == [0.0, 1.0] and written["sweep"]["num_examples"] == 2
  assert (out / "needle_tiny.png").read_bytes()[:8] == PNG_MAGIC
  run = _run_cli("needle", f"--checkpoint={tmp_path / 'nothing'}", f"--output_dir={out}")
  assert run.returncode != 0 and "ssmjax model directory" in run.stderr and "nothing" in run.stderr
