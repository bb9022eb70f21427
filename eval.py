"""Evaluation entry point: ``python eval.py SUBCOMMAND [--flags]``.

Subcommands (each a function in `SUBCOMMANDS`; add new ones there, with their flags in their own block below):

  generate   Print text generated from a model, streaming tokens as they are made:
             ``python eval.py generate --checkpoint DIR --prompt "Once upon a time" [--max_new_tokens 64]
             [--temperature 0.8 --top_k 50 --top_p 0.95 --seed 0] [--tokenizer byte|PATH]``

``--checkpoint`` is an ssmjax model directory (``model_config.json`` + ``params/``, `ssmjax.checkpoint.save_model`) or a
HuggingFace transformers directory (``config.json`` + safetensors, `ssmjax.load_pretrained`). The library does the
work (``ssmjax.generate``); this file only reads flags and prints.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from absl import app, flags

FLAGS = flags.FLAGS

# Flags shared by every subcommand.
flags.DEFINE_string("checkpoint", None, "Model directory: ssmjax (model_config.json + params/) or HF (config.json).")
flags.DEFINE_string("tokenizer", "byte", "'byte' (UTF-8 bytes), a SentencePiece .model, a tokenizer.json, or a dir.")

# generate
flags.DEFINE_string("prompt", "", "generate: the prompt text.")
flags.DEFINE_integer("max_new_tokens", 64, "generate: tokens to generate.")
flags.DEFINE_float("temperature", 0.0, "generate: sampling temperature; 0 is greedy.")
flags.DEFINE_integer("top_k", None, "generate: keep the k most likely tokens (None: all).")
flags.DEFINE_float("top_p", None, "generate: nucleus sampling mass (None: no nucleus filter).")
flags.DEFINE_integer("seed", 0, "generate: sampling seed.")
flags.DEFINE_integer("eos_id", None, "generate: stop token (default: the tokenizer's EOS; -1: never stop early).")
flags.DEFINE_bool("stream", True, "generate: print tokens as they are made (else print the text at the end).")


def load_checkpoint(path: str) -> tuple[Any, Any]:
  """(ModelConfig, params) from an ssmjax model directory or a HuggingFace directory."""
  from ssmjax import checkpoint, convert  # Imported here: flag parsing and --help stay fast.

  if os.path.exists(os.path.join(path, checkpoint.CONFIG_FILE)):
    return checkpoint.load_model(path)
  if os.path.exists(os.path.join(path, "config.json")):
    return convert.load_pretrained(path)
  raise FileNotFoundError(f"--checkpoint {path!r}: neither an ssmjax model directory ({checkpoint.CONFIG_FILE}) nor a "
                          "HuggingFace directory (config.json)")


def load_tokenizer(spec: str):
  from ssmjax.tokenizers import load_tokenizer as load  # The tokenizer module is only needed by some subcommands.

  return load(spec)


def run_generate(argv: list[str]) -> None:
  if len(argv) > 0:
    raise app.UsageError(f"generate takes no positional arguments, got {argv}")
  if not FLAGS.checkpoint:
    raise app.UsageError("generate needs --checkpoint DIR")
  config, params = load_checkpoint(FLAGS.checkpoint)
  tokenizer = load_tokenizer(FLAGS.tokenizer)
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"the tokenizer's vocabulary ({tokenizer.vocab_size}) is larger than the model's "
                     f"({config.vocab_size}): --tokenizer does not belong to --checkpoint")
  eos_id = tokenizer.eos_id if FLAGS.eos_id is None else (None if FLAGS.eos_id < 0 else FLAGS.eos_id)
  from ssmjax.generate import generate_text  # Streaming: an ordered host callback from inside the decode loop.

  print(FLAGS.prompt, end="", flush=True)
  text = generate_text(config, params, tokenizer, FLAGS.prompt, max_new_tokens=FLAGS.max_new_tokens,
                       temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed,
                       eos_id=eos_id, stream=sys.stdout if FLAGS.stream else None)
  print("" if FLAGS.stream else text, flush=True)


SUBCOMMANDS: dict[str, Callable[[list[str]], None]] = {
    "generate": run_generate,
}


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
    raise app.UsageError(f"usage: python eval.py {{{','.join(SUBCOMMANDS)}}} [--flags]; got {argv[1:2] or 'nothing'}")
  SUBCOMMANDS[argv[1]](argv[2:])


if __name__ == "__main__":
  app.run(main)
