"""Throughput of the input pipelines: batches/s and tokens/s of `make_train_iterator` on this host.

Cases: the synthetic task mix, and packed text from a generated JSONL corpus with the byte tokenizer and with the two
tokenizer fixtures (SentencePiece, HF). The text corpus is random words written to a temporary directory, so the
numbers measure tokenization, packing and batching, not disk reads. Prints a table and one JSON line.

  python benchmarks/data_pipeline.py
  python benchmarks/data_pipeline.py --seq_len=4096 --batch=16 --batches=50
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

_SEQ_LEN = flags.DEFINE_integer("seq_len", 1024, "Tokens per row.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per batch (one host).")
_BATCHES = flags.DEFINE_integer("batches", 100, "Batches timed per case (after 3 warm-up batches).")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "DataConfig.prefetch.")

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "data")


def _write_corpus(directory: str, num_docs: int = 2000) -> str:
  import numpy as np

  rng = np.random.default_rng(0)
  words = ["state", "space", "model", "attention", "phone", "book", "number", "token", "sequence", "layer", "the",
           "a", "of", "and", "mamba", "hybrid", "copy", "recall", "context", "long"]
  path = os.path.join(directory, "corpus.jsonl")
  with open(path, "w") as f:
    for _ in range(num_docs):
      text = " ".join(rng.choice(words, size=int(rng.integers(20, 400))))
      f.write(json.dumps({"text": text}) + "\n")
  return path


def _time(config, batches: int) -> dict:
  from ssmjax.data import make_train_iterator

  iterator = make_train_iterator(config)
  for _ in range(3):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  iterator.close()
  tokens = batches * batch["inputs"].size
  return {"batches_per_s": batches / seconds, "tokens_per_s": tokens / seconds}


def main(argv):
  del argv
  from ssmjax.data import DataConfig

  common = dict(seq_len=_SEQ_LEN.value, global_batch_size=_BATCH.value, prefetch=_PREFETCH.value)
  results = {}
  results["synthetic (3 tasks)"] = _time(DataConfig(**common), _BATCHES.value)
  with tempfile.TemporaryDirectory() as directory:
    corpus = _write_corpus(directory)
    for name, tokenizer in [("byte", "byte"), ("sentencepiece", os.path.join(FIXTURES, "tiny_sp.model")),
                            ("hf", os.path.join(FIXTURES, "tiny_hf", "tokenizer.json"))]:
      config = DataConfig(source="text", paths=(corpus,), tokenizer=tokenizer, **common)
      results[f"text jsonl, {name}"] = _time(config, _BATCHES.value)
  print(f"{'case':<26}{'batches/s':>12}{'tokens/s':>14}")
  for case, r in results.items():
    print(f"{case:<26}{r['batches_per_s']:>12.1f}{r['tokens_per_s']:>14.0f}")
  print(json.dumps({"seq_len": _SEQ_LEN.value, "batch": _BATCH.value, "prefetch": _PREFETCH.value,
                    "results": {k: {m: round(v, 1) for m, v in r.items()} for k, r in results.items()}}))


if __name__ == "__main__":
  app.run(main)
