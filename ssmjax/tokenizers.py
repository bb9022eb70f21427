"""Tokenizers for the data pipelines: bytes (the default, no files), SentencePiece ``.model``, HF ``tokenizer.json``.

``load_tokenizer(spec)`` returns an object with ``vocab_size``, ``eos_id`` (the end-of-document token that packing puts
between documents), ``pad_id`` (filler that never carries loss), ``encode(text) -> list[int]`` and ``decode(ids)``:

  ``"byte"``                 ids 0..255 are the UTF-8 bytes, then ``EOD = 256`` and ``PAD = 257`` (vocab 258).
  ``path/to/x.model``        SentencePiece, as Megatron's ``GPTSentencePieceTokenizer`` (the NVIDIA 8B models):
                             ``encode_as_ids`` with no BOS, ``eos_id = sp.eos_id()``, vocab = number of pieces.
  ``path/to/tokenizer.json`` HF ``tokenizers`` (GPT-NeoX-20B for the state-spaces models), encoded without the
                             post-processor's special tokens; EOS from a sibling ``tokenizer_config.json`` when present,
                             else the first of ``<|endoftext|>``, ``</s>``, ``<eos>``, ``<|end_of_text|>`` in the vocab.
  a directory                its ``tokenizer.json``, else its ``tokenizer.model``.

Models must have a vocabulary of at least ``vocab_size`` entries (Megatron and state-spaces pad theirs further).
"""

from __future__ import annotations

import json
import os
from typing import Protocol, Sequence

import numpy as np

BYTE_SPEC = "byte"
_HF_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


class Tokenizer(Protocol):
  """What the data pipelines need from a tokenizer."""

  vocab_size: int  # Every id produced is < vocab_size.
  eos_id: int  # End of document (Megatron's "eod"); packing appends it to every document.
  pad_id: int  # Filler for unused positions; never carries loss.

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, followed by the special ids EOD and PAD. Round-trips any text exactly."""

  num_bytes = 256
  eos_id = 256
  pad_id = 257
  vocab_size = 258

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Decodes byte ids; special ids are dropped and invalid UTF-8 becomes U+FFFD."""
    data = bytes(int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1) if 0 <= i < self.num_bytes)
    return data.decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class SentencePieceTokenizer:
  """A SentencePiece model used as Megatron's GPTSentencePieceTokenizer: no BOS, EOD = the model's EOS."""

  def __init__(self, path: str):
    import sentencepiece  # Imported here: only SentencePiece users need the package loaded.

    self.path = path
    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.vocab_size = int(self._sp.vocab_size())
    self.eos_id = int(self._sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"SentencePiece model {path!r} has no EOS piece; packing needs one as the end-of-document id")
    pad = int(self._sp.pad_id())
    self.pad_id = pad if pad >= 0 else self.eos_id

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode_as_ids(text))

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._sp.decode_ids([int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.path!r})"


class HFTokenizer:
  """An HF ``tokenizers`` tokenizer.json (e.g. GPT-NeoX-20B), encoded without added special tokens."""

  def __init__(self, path: str):
    import tokenizers  # Imported here: only HF users need the package loaded.

    self.path = path
    self._tok = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    eos_token = _eos_token_from_config(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
    candidates = (eos_token,) if eos_token else _HF_EOS_CANDIDATES
    ids = [self._tok.token_to_id(token) for token in candidates]
    found = [i for i in ids if i is not None]
    if not found:
      raise ValueError(f"HF tokenizer {path!r} has none of the end-of-document tokens {candidates}")
    self.eos_id = int(found[0])
    pad = self._tok.token_to_id("<pad>")
    self.pad_id = int(pad) if pad is not None else self.eos_id
    self.vocab_size = max(self.vocab_size, self.eos_id + 1, self.pad_id + 1)

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)], skip_special_tokens=True)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.path!r})"


def _eos_token_from_config(path: str) -> str | None:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    eos = json.load(f).get("eos_token")
  if isinstance(eos, dict):  # Older configs store an AddedToken dict.
    eos = eos.get("content")
  return eos if isinstance(eos, str) else None


def load_tokenizer(spec: str = BYTE_SPEC) -> Tokenizer:
  """Returns the tokenizer named by ``spec``: ``"byte"``, a SentencePiece ``.model``, a ``tokenizer.json`` or a dir.

  Raises:
    FileNotFoundError: ``spec`` names a file or directory that does not exist (the message names it).
    ValueError: ``spec`` is neither ``"byte"`` nor a tokenizer file.
  """
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"tokenizer spec must be 'byte' or a tokenizer file path, got {spec!r}")
  if spec == BYTE_SPEC:
    return ByteTokenizer()
  path = os.path.expanduser(spec)
  looks_like_path = os.sep in spec or spec.endswith((".model", ".json"))
  if not os.path.exists(path):
    if looks_like_path:
      raise FileNotFoundError(f"tokenizer file {spec!r} does not exist")
    raise ValueError(f"unknown tokenizer {spec!r}: expected 'byte', a SentencePiece .model file, an HF "
                     "tokenizer.json file, or a directory holding one")
  if os.path.isdir(path):
    for name in ("tokenizer.json", "tokenizer.model"):
      if os.path.isfile(os.path.join(path, name)):
        return load_tokenizer(os.path.join(path, name))
    raise FileNotFoundError(f"tokenizer directory {spec!r} holds neither tokenizer.json nor tokenizer.model")
  if path.endswith(".json"):
    return HFTokenizer(path)
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  raise ValueError(f"tokenizer file {spec!r} has an unknown kind: expected a SentencePiece '.model' or an HF '.json'")
