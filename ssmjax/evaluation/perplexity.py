"""Perplexity of a model on text documents (plain text, JSONL, ArrayRecord), with exact per-token accounting.

Each document is scored on its own, as it would follow an end-of-document token in packed training: the tokens are
``[EOD] + tokenizer.encode(document)`` (``+ [EOD]`` with ``score_eod``) and every token after the leading EOD is
predicted exactly once. A document longer than ``seq_len`` is cut into windows: the first window predicts its first
``seq_len`` tokens; each later window predicts the next ``stride`` tokens (fewer at the end), given as much of the
preceding text as fits in ``seq_len`` input tokens. ``stride == seq_len`` gives disjoint windows whose last window still
has a full context (lm-evaluation-harness's rolling log-likelihood); a smaller stride gives every prediction at least
``seq_len - stride`` tokens of context, at ``seq_len / stride`` times the cost.

The result (`perplexity_of_files`, `perplexity_of_texts`) is a JSON-able dict:

  num_documents, num_tokens   documents with at least one scored token, and the scored tokens
  num_bytes                   UTF-8 bytes of those documents (EOD tokens have none)
  nll                         the summed negative log-likelihood in nats (float64 sum of float32 per-token values)
  mean_nll, perplexity        nll / num_tokens and exp(mean_nll)
  bits_per_byte               nll / (num_bytes ln 2): comparable across tokenizers
  documents                   with ``per_document``: [{"index", "num_tokens", "nll"}] per scored document

Files are read with the training pipeline's sources (`ssmjax.data.text.document_dataset`), in path order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from ssmjax.config import ModelConfig
from ssmjax.evaluation.loading import check_tokenizer_fits
from ssmjax.evaluation.scoring import ScoreRequest, TokenScorer
from ssmjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class PerplexitySettings:
  """How documents are windowed and batched (see the module docstring)."""

  seq_len: int = 2048  # the most input tokens per window
  stride: int | None = None  # tokens predicted per window after the first (None: seq_len, disjoint windows)
  batch_size: int = 8  # windows per forward pass
  text_field: str = "text"  # JSONL key holding the document
  max_documents: int | None = None  # read only the first N documents (None: all)
  score_eod: bool = False  # also predict the EOD that ends each document (as packed training does)
  per_document: bool = False  # add each document's token count and NLL to the result

  def __post_init__(self):
    for name in ("seq_len", "batch_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"PerplexitySettings.{name} must be a positive int, got {value!r}")
    if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)
                                    or not 1 <= self.stride <= self.seq_len):
      raise ValueError(f"PerplexitySettings.stride must be an int in [1, seq_len={self.seq_len}] or None, "
                       f"got {self.stride!r}")
    if self.max_documents is not None and (not isinstance(self.max_documents, int) or self.max_documents < 1):
      raise ValueError(f"PerplexitySettings.max_documents must be a positive int or None, got {self.max_documents!r}")


def document_windows(tokens: Sequence[int], seq_len: int, stride: int | None = None) -> list[ScoreRequest]:
  """Windows that predict each of ``tokens[1:]`` exactly once (see the module docstring)."""
  stride = seq_len if stride is None else stride
  total = len(tokens)
  windows, end = [], 1  # tokens[1:end] are predicted so far
  while end < total:
    new_end = min(total, seq_len + 1 if end == 1 else end + stride)
    start = max(0, new_end - seq_len - 1)
    windows.append(ScoreRequest(tokens=list(tokens[start:new_end]), num_scored=new_end - end))
    end = new_end
  return windows


def perplexity_of_texts(config: ModelConfig, params: Any, tokenizer: Tokenizer, texts: Iterable[str],
                        settings: PerplexitySettings = PerplexitySettings()) -> dict:
  """Perplexity of ``config`` / ``params`` on the documents ``texts`` (see the module docstring)."""
  check_tokenizer_fits(tokenizer, config)
  requests: list[ScoreRequest] = []
  owners: list[int] = []  # document (position among the scored documents) of each window
  documents: list[dict] = []
  num_bytes = 0
  for index, text in enumerate(texts):
    if settings.max_documents is not None and index >= settings.max_documents:
      break
    if not isinstance(text, str):
      raise TypeError(f"document {index} is a {type(text).__name__}, expected str")
    tokens = [tokenizer.eos_id] + list(tokenizer.encode(text)) + ([tokenizer.eos_id] if settings.score_eod else [])
    if len(tokens) < 2:
      continue  # an empty document: nothing to predict
    windows = document_windows(tokens, settings.seq_len, settings.stride)
    requests.extend(windows)
    owners.extend([len(documents)] * len(windows))
    documents.append({"index": index, "num_tokens": len(tokens) - 1, "nll": 0.0})
    num_bytes += len(text.encode("utf-8"))
  if not documents:
    raise ValueError("perplexity: no document has a token to score (no documents, or all empty)")
  scorer = TokenScorer(config, params, batch_size=settings.batch_size, max_length=settings.seq_len,
                       pad_id=tokenizer.pad_id)
  for owner, scores in zip(owners, scorer.score(requests)):
    documents[owner]["nll"] -= scores.logprob
  num_tokens = sum(d["num_tokens"] for d in documents)
  nll = math.fsum(d["nll"] for d in documents)
  result = {
      "num_documents": len(documents),
      "num_tokens": num_tokens,
      "num_bytes": num_bytes,
      "nll": nll,
      "mean_nll": nll / num_tokens,
      "perplexity": math.exp(nll / num_tokens),
      "bits_per_byte": nll / (num_bytes * math.log(2)) if num_bytes else None,
      "seq_len": settings.seq_len,
      "stride": settings.stride or settings.seq_len,
      "score_eod": settings.score_eod,
      "tokenizer": repr(tokenizer),
  }
  if settings.per_document:
    result["documents"] = documents
  return result


def _documents(paths: Sequence[str], text_field: str) -> Iterable[str]:
  from ssmjax.data.config import DataConfig  # the grain pipeline is imported only when files are read
  from ssmjax.data.text import document_dataset

  dataset = document_dataset(DataConfig(source="text", paths=tuple(paths), text_field=text_field))
  for index in range(len(dataset)):
    yield dataset[index]


def perplexity_of_files(config: ModelConfig, params: Any, tokenizer: Tokenizer, paths: Sequence[str],
               settings: PerplexitySettings = PerplexitySettings()) -> dict:
  """Perplexity on the documents of ``paths`` (files, directories or globs of .txt / .jsonl / .array_record files).

  Raises:
    FileNotFoundError / ValueError: from the data sources (a missing file, an unknown kind, a JSONL record without
      ``text_field``), or when no document has a token to score.
  """
  if isinstance(paths, str) or not paths:
    raise ValueError(f"paths must be a non-empty sequence of data files or patterns, got {paths!r}")
  result = perplexity_of_texts(config, params, tokenizer, _documents(paths, settings.text_field), settings)
  return {"paths": list(paths)} | result


def summary_line(result: dict) -> str:
  """One human-readable line of a result."""
  bpb = result["bits_per_byte"]
  return (f"perplexity {result['perplexity']:.4f} (mean NLL {result['mean_nll']:.4f} nats/token"
          + (f", {bpb:.4f} bits/byte" if bpb is not None else "")
          + f") over {result['num_tokens']:,} tokens in {result['num_documents']:,} documents")


__all__ = ["PerplexitySettings", "document_windows", "perplexity_of_files", "perplexity_of_texts", "summary_line"]
