"""``python eval.py perplexity | lm_eval | speed`` on a tiny checkpoint, gin bindings, and clear errors for bad input.

eval.py is loaded once and run in this process (flags parsed as the command line would be): its programs then share
the compilations of the library tests, which a subprocess per command would redo. The slow test runs lm-eval's own
command line (``python -m ssmjax.evaluation.lm_eval_adapter``), which indexes all of lm-eval's tasks.
"""

import importlib.util
import json
import math
import os
import sys

import pytest
from absl import app, flags

from ssmjax.evaluation import PerplexitySettings, perplexity_of_texts
from ssmjax.tokenizers import load_tokenizer
from tiny_eval_model import CONFIG, params, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ["The quick brown fox jumps over", "The quick br", "Th"]


def _eval_module():
  if "ssmjax_eval_cli" not in sys.modules:
    spec = importlib.util.spec_from_file_location("ssmjax_eval_cli", os.path.join(REPO, "eval.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["ssmjax_eval_cli"] = module
    spec.loader.exec_module(module)
  return sys.modules["ssmjax_eval_cli"]


def run_eval(capsys, *args):
  """Runs ``python eval.py ARGS`` here; returns (printed text, the JSON line's object)."""
  module = _eval_module()
  flags.FLAGS.unparse_flags()
  try:
    argv = flags.FLAGS(["eval.py", *args])
    module.main(argv)
  finally:
    flags.FLAGS.unparse_flags()
  out = capsys.readouterr().out
  return out, json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return save_checkpoint(tmp_path_factory.mktemp("model"))


def test_perplexity_command_with_gin_settings_and_flags(checkpoint, tmp_path, capsys):
  data = tmp_path / "docs.jsonl"
  data.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
  gin_file = tmp_path / "ppl.gin"
  gin_file.write_text("ssmjax.PerplexitySettings.seq_len = 32\nssmjax.PerplexitySettings.batch_size = 7\n")
  out, result = run_eval(capsys, "perplexity", f"--checkpoint={checkpoint}", f"--data={data}",
                         f"--gin_file={gin_file}", "--batch_size=2", f"--output_dir={tmp_path / 'out'}")
  expected = perplexity_of_texts(CONFIG, params(), load_tokenizer("byte"), DOCS,
                                 PerplexitySettings(seq_len=32, batch_size=2))
  assert result["seq_len"] == 32  # from gin; --batch_size=2 won over gin's 7 (7 would compile new shapes)
  assert result["num_tokens"] == expected["num_tokens"] == sum(map(len, DOCS))
  assert result["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
  assert result["perplexity"] == pytest.approx(math.exp(result["nll"] / result["num_tokens"]), rel=1e-12)
  assert f"perplexity {result['perplexity']:.4f}" in out
  with open(tmp_path / "out" / "perplexity.json") as f:
    assert json.load(f) == result


def test_lm_eval_command_runs_local_tasks(checkpoint, tmp_path, capsys):
  pytest.importorskip("lm_eval", reason="lm-evaluation-harness is optional: pip install -e .[eval]")
  from test_lm_eval import write_tasks

  tasks = write_tasks(tmp_path)
  out, result = run_eval(capsys, "lm_eval", f"--checkpoint={checkpoint}", "--tasks=ssmjax_test_mc,ssmjax_test_gen",
                         f"--include_path={tasks}", "--batch_size=2", "--max_length=64",
                         "--gin_bindings=ssmjax.run_lm_eval.include_defaults = False")
  assert set(result["results"]) == {"ssmjax_test_mc", "ssmjax_test_gen"}
  assert 0.0 <= result["results"]["ssmjax_test_mc"]["acc,none"] <= 1.0
  assert "ssmjax_test_mc" in out and "acc" in out  # lm-eval's results table


def test_speed_command_reports_each_case_with_the_roofline_prediction(checkpoint, capsys):
  import jax

  from ssmjax.cache import cache_nbytes, init_cache
  from ssmjax.perf import predict_decode

  out, result = run_eval(capsys, "speed", f"--checkpoint={checkpoint}", "--batch_sizes=1", "--context_lengths=8",
                         "--new_tokens=2", "--repeats=1", "--device_preset=h100")
  (row,) = result["results"]
  assert (row["batch"], row["context"], result["new_tokens"], result["device"]) == (1, 8, 2, "h100")
  assert row["prefill_ms"] > 0 and row["decode_ms"] > 0 and row["tokens_per_s"] == pytest.approx(1e3 / row["decode_ms"])
  cache = init_cache(CONFIG, 1, 8 + 2 * 2)  # room for the warm-up and the timed run
  assert row["cache_mb"] == cache_nbytes(jax.eval_shape(lambda: cache)) / 2**20
  expected = predict_decode(CONFIG, 1, 8, "h100", weight_bytes=4, kv_bytes=4, conv_bytes=4).step_seconds
  assert row["predicted_ms"] == pytest.approx(1e3 * expected, rel=1e-12)
  assert "prefill ms" in out and "decode ms" in out


def test_bad_input_gets_clear_errors(checkpoint, tmp_path, capsys):
  module = _eval_module()

  def fails(error, match, *args):
    flags.FLAGS.unparse_flags()
    try:
      with pytest.raises(error, match=match):
        module.main(flags.FLAGS(["eval.py", *args]))
    finally:
      flags.FLAGS.unparse_flags()

  fails(app.UsageError, r"usage: python eval.py \{generate,.*perplexity,lm_eval,speed\}", "perplexty")
  fails(app.UsageError, "perplexity needs --data", "perplexity", f"--checkpoint={checkpoint}")
  fails(FileNotFoundError, "does not exist; expected an ssmjax model directory", "perplexity",
        f"--checkpoint={tmp_path / 'missing'}", f"--data={tmp_path}")
  fails(FileNotFoundError, "is neither an ssmjax model directory", "speed", f"--checkpoint={tmp_path}")
  fails(app.UsageError, "speed needs --checkpoint", "speed")
  fails(ValueError, r"SpeedSettings.new_tokens must be a positive int", "speed", f"--checkpoint={checkpoint}",
        "--new_tokens=0")
  try:
    import lm_eval  # noqa: F401  # optional: pip install -e .[eval]
  except ImportError:
    lm_eval = None
  if lm_eval is not None:
    from test_lm_eval import write_tasks

    fails(ValueError, r"unknown task\(s\) \['no_such_task'\]", "lm_eval", f"--checkpoint={checkpoint}",
          "--tasks=no_such_task", f"--include_path={write_tasks(tmp_path)}",
          "--gin_bindings=ssmjax.run_lm_eval.include_defaults = False")
  fails(app.UsageError, "lm_eval needs --tasks", "lm_eval", f"--checkpoint={checkpoint}")


@pytest.mark.slow
def test_lm_eval_command_line_with_the_ssmjax_model(checkpoint, tmp_path, monkeypatch, capsys):
  # `python -m ssmjax.evaluation.lm_eval_adapter ...` is lm-eval's own CLI (`lm_eval ...`) with the model registered.
  pytest.importorskip("lm_eval", reason="lm-evaluation-harness is optional: pip install -e .[eval]")
  from test_lm_eval import write_tasks

  from ssmjax.evaluation import lm_eval_adapter

  output = tmp_path / "results"
  lm_eval_adapter.main(["--model", "ssmjax", "--model_args", f"checkpoint={checkpoint},max_length=64",
                        "--batch_size", "2", "--tasks", "ssmjax_test_mc", "--include_path", write_tasks(tmp_path),
                        "--output_path", str(output)])
  files = [os.path.join(root, f) for root, _, names in os.walk(output) for f in names if f.endswith(".json")]
  assert files, f"no results JSON under {output}"
  with open(files[0]) as f:
    results = json.load(f)["results"]
  assert "acc,none" in results["ssmjax_test_mc"]
  assert "ssmjax_test_mc" in capsys.readouterr().out
