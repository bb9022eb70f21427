"""Evaluation entry point: ``python eval.py SUBCOMMAND [--flags]``.

Subcommands (each a function in `SUBCOMMANDS`; add new ones there, with their flags in their own block below):

  generate   Print text generated from a model, streaming tokens as they are made:
             ``python eval.py generate --checkpoint DIR --prompt "Once upon a time" [--max_new_tokens 64]
             [--temperature 0.8 --top_k 50 --top_p 0.95 --seed 0] [--tokenizer byte|PATH]``
  phonebook  Phone-book lookup accuracy against context length, JSON + PNG (one line per model):
             ``python eval.py phonebook --models=a=DIR1,b=DIR2 --context_lengths=64,128,256,512 --output_dir=OUT
             [--book_sizes=2,8,32 instead] [--num_shots 2 --num_queries 4 --examples_per_point 32]``
  needle     Passkey retrieval over context lengths x insertion depths, JSON + a heatmap PNG per model:
             ``python eval.py needle --checkpoint DIR --context_lengths=256,1024 --depths=0,0.5,1 --output_dir=OUT
             [--haystack_file=book.txt --key_len 5]``
  perplexity Perplexity (and bits per byte) on text documents, each scored on its own in windows of --seq_len:
             ``python eval.py perplexity --checkpoint DIR --data=val.jsonl,more/*.txt [--seq_len 2048 --stride 512]
             [--text_field text --max_documents 1000 --batch_size 8] [--output_dir OUT]``
  lm_eval    lm-evaluation-harness tasks through the ``ssmjax`` harness model (needs ``pip install -e .[eval]``):
             ``python eval.py lm_eval --checkpoint DIR --tasks=hellaswag,piqa [--num_fewshot 0 --limit 100]
             [--include_path my_tasks/ --batch_size 8 --max_length 4096]``
  speed      Prefill and decode timings of ``ssmjax.generate`` for the checkpoint, with the roofline prediction:
             ``python eval.py speed --checkpoint DIR --batch_sizes=1,8 --context_lengths=128,1024 [--new_tokens 32]
             [--device_preset h100]``

perplexity, lm_eval and speed print a summary and one JSON line, and write ``<subcommand>.json`` to ``--output_dir``
when it is given. Their settings can also come from gin (``--gin_file``, ``--gin_bindings``): the configurables are
``ssmjax.PerplexitySettings``, ``ssmjax.SpeedSettings`` and ``ssmjax.run_lm_eval`` (e.g. ``--gin_bindings
'ssmjax.run_lm_eval.num_fewshot = 5'``); flags given on the command line win over gin.

``--checkpoint`` is an ssmjax model directory (``model_config.json`` + ``params/``, `ssmjax.checkpoint.save_model`) or a
HuggingFace transformers directory (``config.json`` + safetensors, `ssmjax.load_pretrained`). The library does the
work (``ssmjax.generate``); this file only reads flags and prints.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from absl import app, flags, logging

# Set before JAX starts: without it XLA:CPU copies every KV cache on every decode step (see ssmjax.generate).
_REGION_ANALYSIS = "--xla_cpu_copy_insertion_use_region_analysis=true"
if _REGION_ANALYSIS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _REGION_ANALYSIS).strip()

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

# phonebook and needle (ssmjax.evaluation.phonebook / .needle): results as JSON + PNG in --output_dir.
flags.DEFINE_list("models", None, "phonebook, needle: NAME=DIR,... models to compare in one plot (or --checkpoint).")
flags.DEFINE_string("output_dir", None, "phonebook, needle: directory for the JSON results and PNG plots; "
                    "perplexity, lm_eval, speed: for <subcommand>.json.")
flags.DEFINE_list("book_sizes", None, "phonebook: entries per phone book, one point each (or --context_lengths).")
flags.DEFINE_list("context_lengths", None, "phonebook: input tokens per point (the largest book that fits); needle: "
                  "exact input tokens per column (default 128,256,512); speed: prompt tokens (default 128,1024).")
flags.DEFINE_integer("examples_per_point", None, "phonebook: books per point (default 32); needle: keys per cell "
                     "(default 8).")
flags.DEFINE_integer("num_shots", 2, "phonebook: demonstration queries (answers shown, not scored) after the book.")
flags.DEFINE_integer("num_queries", 4, "phonebook: scored queries per book.")
flags.DEFINE_integer("name_len", 3, "phonebook: letters per name.")
flags.DEFINE_integer("number_len", 2, "phonebook: digits per number (chance: 10 ** -number_len).")
flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "needle: insertion depths, fractions of the haystack.")
flags.DEFINE_integer("key_len", 5, "needle: digits of the pass key.")
flags.DEFINE_string("haystack_file", None, "needle: a UTF-8 text file whose sentences form the haystack (default: "
                    "built-in filler).")
flags.DEFINE_integer("eval_seed", 0, "phonebook, needle: seed of the books, keys and haystack starts.")

# perplexity, lm_eval, speed (ssmjax.evaluation.perplexity / .lm_eval_adapter / .speed). Unset flags (None) leave the
# setting to gin or to the library default.
flags.DEFINE_multi_string("gin_file", None, "perplexity, lm_eval, speed: gin files binding their settings.")
flags.DEFINE_multi_string("gin_bindings", [], "perplexity, lm_eval, speed: gin bindings, after the files.")
flags.DEFINE_integer("batch_size", None, "perplexity, lm_eval: sequences per forward pass (default 8).")
flags.DEFINE_list("data", None, "perplexity: text data files, directories or globs (.txt, .jsonl, .array_record).")
flags.DEFINE_string("text_field", None, "perplexity: the JSONL key holding each document (default 'text').")
flags.DEFINE_integer("seq_len", None, "perplexity: most input tokens per window (default 2048).")
flags.DEFINE_integer("stride", None, "perplexity: tokens predicted per window after the first (default: seq_len).")
flags.DEFINE_integer("max_documents", None, "perplexity: score only the first N documents.")
flags.DEFINE_bool("score_eod", None, "perplexity: also predict the EOD token that ends each document.")
flags.DEFINE_bool("per_document", None, "perplexity: report every document's token count and NLL.")
flags.DEFINE_list("tasks", None, "lm_eval: harness task, group or tag names (glob patterns allowed).")
flags.DEFINE_integer("num_fewshot", None, "lm_eval: few-shot examples per prompt (default: each task's own).")
flags.DEFINE_float("limit", None, "lm_eval: examples per task (a fraction if < 1); for quick checks.")
flags.DEFINE_string("include_path", None, "lm_eval: a directory of extra task YAMLs.")
flags.DEFINE_integer("max_length", None, "lm_eval: most tokens the model sees at once (default 4096).")
flags.DEFINE_integer("max_gen_toks", None, "lm_eval: tokens generated when a task sets no max_gen_toks (default 256).")
flags.DEFINE_bool("log_samples", None, "lm_eval: include every request and response in the JSON.")
flags.DEFINE_list("batch_sizes", None, "speed: batch sizes (default 1,8).")
flags.DEFINE_integer("new_tokens", None, "speed: tokens generated in the timed decode run (default 32).")
flags.DEFINE_integer("repeats", None, "speed: timed runs per case, the fastest kept (default 3).")
flags.DEFINE_string("device_preset", None, "speed: ssmjax.perf device for the predicted step time (default h100; "
                    "'none': no prediction).")


def load_checkpoint(path: str) -> tuple[Any, Any]:
  """(ModelConfig, params) from an ssmjax model directory or a HuggingFace directory."""
  from ssmjax.evaluation.loading import load_checkpoint as load  # Imported here: --help stays fast.

  return load(path)


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


def _int_list(name: str, values: list[str] | None) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values or ())
  except ValueError as e:
    raise app.UsageError(f"--{name} must be a comma-separated list of integers, got {values}") from e


def _sweep_models(subcommand: str) -> dict:
  """``{name: (config, params)}`` from --models NAME=DIR,... or --checkpoint DIR (named after the directory)."""
  if bool(FLAGS.models) == bool(FLAGS.checkpoint):
    raise app.UsageError(f"{subcommand} needs exactly one of --checkpoint DIR and --models NAME=DIR,...")
  if not FLAGS.output_dir:
    raise app.UsageError(f"{subcommand} needs --output_dir DIR (for its JSON and PNG results)")
  pairs = [(os.path.basename(os.path.normpath(FLAGS.checkpoint)), FLAGS.checkpoint)] if FLAGS.checkpoint else []
  for item in FLAGS.models or ():
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise app.UsageError(f"--models entries must be NAME=DIR, got {item!r}")
    pairs.append((name, path))
  tokenizer = load_tokenizer(FLAGS.tokenizer)
  models = {}
  for name, path in pairs:
    config, params = load_checkpoint(path)
    if tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f"the tokenizer's vocabulary ({tokenizer.vocab_size}) is larger than model {name!r}'s "
                       f"({config.vocab_size}): --tokenizer does not belong to {path}")
    models[name] = (config, params)
  return models


def run_phonebook(argv: list[str]) -> None:
  if len(argv) > 0:
    raise app.UsageError(f"phonebook takes no positional arguments, got {argv}")
  from ssmjax.data import PhonebookTask
  from ssmjax.evaluation import phonebook

  task = PhonebookTask(num_shots=FLAGS.num_shots, num_queries=FLAGS.num_queries, name_len=FLAGS.name_len,
                       number_len=FLAGS.number_len)
  sweep = phonebook.PhonebookSweep(book_sizes=_int_list("book_sizes", FLAGS.book_sizes),
                                   context_lengths=_int_list("context_lengths", FLAGS.context_lengths), task=task,
                                   num_examples=FLAGS.examples_per_point or 32, seed=FLAGS.eval_seed)
  payload = phonebook.run_phonebook(_sweep_models("phonebook"), sweep, FLAGS.output_dir, FLAGS.tokenizer)
  for name, points in payload["models"].items():
    row = ", ".join(f"{p['context_len']} tokens (book {p['book_size']}): {100 * p['accuracy']:.1f}%" for p in points)
    print(f"{name}: {row}")
  print(f"wrote {os.path.join(FLAGS.output_dir, phonebook.RESULTS_FILE)} and {phonebook.PLOT_FILE}")


def run_needle(argv: list[str]) -> None:
  if len(argv) > 0:
    raise app.UsageError(f"needle takes no positional arguments, got {argv}")
  from ssmjax.evaluation import needle

  try:
    depths = tuple(float(d) for d in FLAGS.depths)
  except ValueError as e:
    raise app.UsageError(f"--depths must be a comma-separated list of fractions, got {FLAGS.depths}") from e
  sweep = needle.NeedleSweep(context_lengths=_int_list("context_lengths", FLAGS.context_lengths) or (128, 256, 512),
                             depths=depths, task=needle.NeedleTask(key_len=FLAGS.key_len),
                             num_examples=FLAGS.examples_per_point or 8, seed=FLAGS.eval_seed,
                             haystack_file=FLAGS.haystack_file)
  payload = needle.run_needle(_sweep_models("needle"), sweep, FLAGS.output_dir, FLAGS.tokenizer)
  for name, result in payload["models"].items():
    print(f"{name}: mean accuracy {100 * result['mean_accuracy']:.1f}% over {len(depths)} depths x "
          f"{len(sweep.context_lengths)} lengths")
  print(f"wrote {os.path.join(FLAGS.output_dir, needle.RESULTS_FILE)} and {', '.join(payload['plots'].values())}")


def _given(**values: Any) -> dict:
  """The flag values that were set (not None): the rest is left to gin bindings and library defaults."""
  return {name: value for name, value in values.items() if value is not None}


def _configurable(fn: Callable) -> Callable:
  """``fn`` with the parsed gin bindings of ``ssmjax.<name>`` applied (explicit arguments win)."""
  import gin

  from ssmjax import gin_utils

  configurable = gin.external_configurable(fn, module=gin_utils.MODULE)
  gin.clear_config()
  gin_utils.parse(FLAGS.gin_file or [], FLAGS.gin_bindings, finalize=False)
  return configurable


def _model_and_tokenizer(subcommand: str) -> tuple[Any, Any, Any]:
  if not FLAGS.checkpoint:
    raise app.UsageError(f"{subcommand} needs --checkpoint DIR")
  from ssmjax.evaluation.loading import check_tokenizer_fits

  config, params = load_checkpoint(FLAGS.checkpoint)
  tokenizer = load_tokenizer(FLAGS.tokenizer)
  check_tokenizer_fits(tokenizer, config)
  return config, params, tokenizer


def _report(subcommand: str, result: dict, summary: str) -> None:
  """Prints ``summary`` and the result as one JSON line; writes ``<subcommand>.json`` to --output_dir if given."""
  import json

  text = json.dumps(result, default=str)
  if FLAGS.output_dir:
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, f"{subcommand}.json")
    with open(path, "w") as f:
      f.write(text + "\n")
    summary += f"\nwrote {path}"
  print(summary)
  print(text, flush=True)


def run_perplexity(argv: list[str]) -> None:
  if len(argv) > 0:
    raise app.UsageError(f"perplexity takes no positional arguments, got {argv}")
  if not FLAGS.data:
    raise app.UsageError("perplexity needs --data FILES (text, JSONL or ArrayRecord files, directories or globs)")
  from ssmjax.evaluation import perplexity

  settings = _configurable(perplexity.PerplexitySettings)(**_given(
      seq_len=FLAGS.seq_len, stride=FLAGS.stride, batch_size=FLAGS.batch_size, text_field=FLAGS.text_field,
      max_documents=FLAGS.max_documents, score_eod=FLAGS.score_eod, per_document=FLAGS.per_document))
  config, params, tokenizer = _model_and_tokenizer("perplexity")
  result = perplexity.perplexity_of_files(config, params, tokenizer, FLAGS.data, settings)
  _report("perplexity", {"checkpoint": FLAGS.checkpoint} | result, perplexity.summary_line(result))


def run_lm_eval(argv: list[str]) -> None:
  if len(argv) > 0:
    raise app.UsageError(f"lm_eval takes no positional arguments, got {argv}")
  if not FLAGS.tasks:
    raise app.UsageError("lm_eval needs --tasks NAME,... (harness task, group or tag names)")
  try:
    from ssmjax.evaluation import lm_eval_adapter
  except ImportError as e:
    raise ImportError(f"lm_eval needs lm-evaluation-harness: pip install -e '.[eval]' ({e})") from e
  limit = FLAGS.limit if FLAGS.limit is None or FLAGS.limit < 1 else int(FLAGS.limit)  # >= 1: a count
  run = _configurable(lm_eval_adapter.run_lm_eval)
  config, params, tokenizer = _model_and_tokenizer("lm_eval")
  result = run(config, params, tokenizer, FLAGS.tasks, **_given(
      num_fewshot=FLAGS.num_fewshot, limit=limit, include_path=FLAGS.include_path,
      batch_size=FLAGS.batch_size, max_length=FLAGS.max_length, max_gen_toks=FLAGS.max_gen_toks,
      log_samples=FLAGS.log_samples))
  from lm_eval.utils import make_table

  _report("lm_eval", {"checkpoint": FLAGS.checkpoint} | result, make_table(result))


def run_speed(argv: list[str]) -> None:
  if len(argv) > 0:
    raise app.UsageError(f"speed takes no positional arguments, got {argv}")
  from ssmjax.evaluation import speed

  device = FLAGS.device_preset
  settings = _configurable(speed.SpeedSettings)(**_given(
      batch_sizes=_int_list("batch_sizes", FLAGS.batch_sizes) or None,
      contexts=_int_list("context_lengths", FLAGS.context_lengths) or None, new_tokens=FLAGS.new_tokens,
      repeats=FLAGS.repeats), **({} if device is None else {"device": None if device == "none" else device}))
  config, params, _ = _model_and_tokenizer("speed")
  result = speed.decode_speed(config, params, settings)
  _report("speed", {"checkpoint": FLAGS.checkpoint} | result, speed.format_table(result))


SUBCOMMANDS: dict[str, Callable[[list[str]], None]] = {
    "generate": run_generate,
    "phonebook": run_phonebook,
    "needle": run_needle,
    "perplexity": run_perplexity,
    "lm_eval": run_lm_eval,
    "speed": run_speed,
}


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
    raise app.UsageError(f"usage: python eval.py {{{','.join(SUBCOMMANDS)}}} [--flags]; got {argv[1:2] or 'nothing'}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint read at INFO; -v 0 shows it.
  SUBCOMMANDS[argv[1]](argv[2:])


if __name__ == "__main__":
  app.run(main)
