"""Tokenizers: each kind round-trips text, ids stay below vocab_size, bad specs get clear errors."""

import json
import os
import shutil

import numpy as np
import pytest

from ssmjax.tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, load_tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
SP_MODEL = os.path.join(FIXTURES, "tiny_sp.model")
HF_JSON = os.path.join(FIXTURES, "tiny_hf", "tokenizer.json")
TEXTS = ["The phone book lists every name.", "  two  spaces\nand lines\n\n", "ünïcödé 数字 😀", "",
         "0123456789"]


@pytest.mark.parametrize("spec, kind", [("byte", ByteTokenizer), (SP_MODEL, SentencePieceTokenizer),
                                        (HF_JSON, HFTokenizer), (os.path.dirname(HF_JSON), HFTokenizer)],
                         ids=["byte", "sentencepiece", "hf_json", "hf_directory"])
@pytest.mark.parametrize("text", TEXTS, ids=["ascii", "whitespace", "unicode", "empty", "digits"])
def test_each_tokenizer_round_trips_text(spec, kind, text):
  tokenizer = load_tokenizer(spec)
  assert isinstance(tokenizer, kind)
  ids = tokenizer.encode(text)
  assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
  assert tokenizer.decode(ids) == text
  assert tokenizer.decode(np.asarray(ids, np.int32)) == text  # Arrays from the pipeline decode too.


def test_byte_tokenizer_ids_are_utf8_bytes_and_specials_follow():
  tokenizer = load_tokenizer("byte")
  assert tokenizer.encode("aé") == [97, 0xC3, 0xA9]
  assert (tokenizer.eos_id, tokenizer.pad_id, tokenizer.vocab_size) == (256, 257, 258)
  assert tokenizer.decode([104, tokenizer.eos_id, 105, tokenizer.pad_id]) == "hi"  # Specials are dropped.


def test_sentencepiece_follows_megatron_gpt_sentencepiece():
  import sentencepiece

  sp = sentencepiece.SentencePieceProcessor(model_file=SP_MODEL)
  tokenizer = load_tokenizer(SP_MODEL)
  text = "names and numbers in the book"
  assert tokenizer.encode(text) == sp.encode_as_ids(text)  # No BOS added.
  assert tokenizer.encode(text)[0] != sp.bos_id()
  assert tokenizer.eos_id == sp.eos_id() and tokenizer.vocab_size == sp.vocab_size()
  assert tokenizer.pad_id == tokenizer.eos_id  # The fixture has no pad piece.


def test_hf_tokenizer_finds_endoftext_and_skips_special_tokens():
  tokenizer = load_tokenizer(HF_JSON)
  assert tokenizer.eos_id == 0  # <|endoftext|>, as in GPT-NeoX.
  assert tokenizer.decode(tokenizer.encode("ab") + [tokenizer.eos_id]) == "ab"


def test_hf_tokenizer_takes_eos_from_tokenizer_config(tmp_path):
  shutil.copy(HF_JSON, tmp_path / "tokenizer.json")
  vocab = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "e"}}))
  assert load_tokenizer(str(tmp_path)).eos_id == vocab["e"]


def test_missing_tokenizer_file_is_named(tmp_path):
  missing = str(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    load_tokenizer(missing)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    load_tokenizer(str(tmp_path / "sub" / "tokenizer.json"))


def test_directory_without_tokenizer_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
    load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("spec", ["bytes", "gpt2", ""])
def test_unknown_tokenizer_spec_is_rejected(spec):
  with pytest.raises(ValueError, match="tokenizer"):
    load_tokenizer(spec)


def test_tokenizer_file_of_unknown_kind_is_rejected(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("a\nb\n")
  with pytest.raises(ValueError, match="vocab.txt"):
    load_tokenizer(str(path))
