"""Text generation: `TextStreamer` / `generate_text`, and the ``python eval.py generate`` command line."""

import io
import os
import subprocess
import sys

import numpy as np

import ssmjax
from ssmjax.checkpoint import save_model
from ssmjax.generate import TextStreamer, generate_text
from ssmjax.tokenizers import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF_MAMBA2 = os.path.join(REPO, "tests", "fixtures", "hf", "mamba2")


def test_text_streamer_holds_back_incomplete_characters_and_skips_eos():
  tokenizer, out = load_tokenizer("byte"), io.StringIO()
  streamer = TextStreamer(tokenizer, eos_id=tokenizer.eos_id, out=out)
  written = []
  for step, token in enumerate(list("é".encode()) + [ord("a"), tokenizer.eos_id]):
    streamer(step, np.array([token]), np.array([True]))
    written.append(out.getvalue())
  streamer(4, np.array([ord("b")]), np.array([False]))  # a finished sequence prints nothing more
  streamer.finish()
  assert written == ["", "é", "éa", "éa"] and out.getvalue() == "éa"


def test_generate_text_streams_exactly_what_it_returns(tiny_model):
  config, params = tiny_model("tiny_hybrid")  # vocab 512 covers the byte tokenizer's 258 ids
  tokenizer, out = load_tokenizer("byte"), io.StringIO()
  text = generate_text(config, params, tokenizer, "Hello", max_new_tokens=10, eos_id=tokenizer.eos_id, stream=out)
  assert out.getvalue() == text
  result = ssmjax.generate(config, params, [tokenizer.encode("Hello")], 10, eos_id=tokenizer.eos_id)
  ids = np.asarray(result.tokens[0, :int(result.lengths[0])])
  assert text == tokenizer.decode([i for i in ids if i != tokenizer.eos_id])


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "eval.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def test_eval_generate_prints_the_prompt_and_the_generated_text(tiny_model, tmp_path):
  config, params = tiny_model("tiny_hybrid")
  save_model(str(tmp_path / "model"), config, params)
  tokenizer = load_tokenizer("byte")
  expected = generate_text(config, params, tokenizer, "Hi there", max_new_tokens=8, eos_id=None)
  run = _run_cli("generate", f"--checkpoint={tmp_path / 'model'}", "--prompt=Hi there", "--max_new_tokens=8",
                 "--eos_id=-1")
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout == "Hi there" + expected + "\n"


def test_eval_rejects_unknown_subcommands_and_missing_checkpoints(tmp_path):
  run = _run_cli("perplexit")
  assert run.returncode != 0 and "usage: python eval.py {generate" in run.stderr
  run = _run_cli("generate", f"--checkpoint={tmp_path}", "--prompt=x")
  assert run.returncode != 0 and "neither an ssmjax model directory" in run.stderr


def test_eval_generate_loads_a_huggingface_directory_and_checks_the_tokenizer_fits():
  # The fixture's vocabulary (96) is smaller than the byte tokenizer's (258): loading succeeds, then the check fires.
  run = _run_cli("generate", f"--checkpoint={HF_MAMBA2}", "--prompt=ab", "--max_new_tokens=4")
  assert run.returncode != 0
  assert "the tokenizer's vocabulary (258) is larger than the model's (96)" in run.stderr
