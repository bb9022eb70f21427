"""Writes the tiny tokenizer fixtures under tests/fixtures/data/ (run from the repository root; no downloads).

  python scripts/make_data_fixtures.py

  tiny_sp.model          SentencePiece BPE, 320 pieces with byte fallback (any text round-trips), identity
                         normalization (keeps the file small), unk/bos/eos = 0/1/2, no pad piece.
  tiny_hf/tokenizer.json HF `tokenizers` byte-level BPE (the GPT-NeoX kind), 300 entries, <|endoftext|> = id 0.

Both are trained on the short made-up corpus below, so their merges mean nothing; the tests only need real files of
each kind. Training is deterministic for a given package version; the tests do not compare ids with fixed values.
"""

from __future__ import annotations

import os

CORPUS = [
    "The phone book lists every name with a number.",
    "A state space model keeps a fixed-size state while it reads the sequence.",
    "Attention layers look back at every earlier token; the hybrid mixes both kinds of layer.",
    "Packing puts an end-of-document token between documents and cuts the stream into rows.",
    "Copying a long string is easy for attention and hard for a small recurrent state.",
    "Numbers such as 0123456789 and names such as alice, bob and carol appear in the book.",
] * 8

OUT = os.path.join("tests", "fixtures", "data")


def make_sentencepiece() -> None:
  import sentencepiece

  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_prefix=os.path.join(OUT, "tiny_sp"), model_type="bpe", vocab_size=320,
      byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, character_coverage=1.0,
      num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  os.remove(os.path.join(OUT, "tiny_sp.vocab"))


def make_hf() -> None:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(CORPUS, trainer=trainer)
  os.makedirs(os.path.join(OUT, "tiny_hf"), exist_ok=True)
  tokenizer.save(os.path.join(OUT, "tiny_hf", "tokenizer.json"), pretty=False)


if __name__ == "__main__":
  os.makedirs(OUT, exist_ok=True)
  make_sentencepiece()
  make_hf()
  for root, _, names in os.walk(OUT):
    for name in sorted(names):
      path = os.path.join(root, name)
      print(f"{path}: {os.path.getsize(path)} bytes")
