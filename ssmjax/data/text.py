"""Text data: document sources (plain text, JSONL, ArrayRecord), tokenization and packing with grain.

Documents come from a random-access grain source over all files, in the order the paths give them. The document
sequence is shuffled per epoch and repeated forever; stream ``r`` (one per row of the global batch) takes documents
``r, r + G, r + 2G, ...`` of it (``G = global_batch_size``), tokenizes them, appends EOD and packs them with grain's
``ConcatThenSplitIterDataset`` into rows of ``seq_len + 1`` tokens. A host builds only the streams of its own rows and
reads only their documents, and the rows do not depend on the number of hosts.

File kinds (by name):
  ``*.txt``             one document per file (UTF-8). Many documents in one file: use JSONL or ArrayRecord.
  ``*.jsonl``           one JSON object per non-blank line; the document is the string under ``text_field``.
                        Lines are indexed once (byte offsets) and read on demand.
  ``*.array_record*``   one document per record, UTF-8 bytes (grain's ``ArrayRecordDataSource``).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import grain
import numpy as np

from ssmjax.data.config import DataConfig
from ssmjax.tokenizers import Tokenizer

_GLOB_CHARS = "*?["


def _kind(path: str) -> str | None:
  name = os.path.basename(path)
  if name.endswith(".txt"):
    return "txt"
  if name.endswith(".jsonl"):
    return "jsonl"
  if ".array_record" in name:
    return "array_record"
  return None


def resolve_paths(patterns: Sequence[str]) -> list[str]:
  """Expands files, directories and glob patterns into data files, in order (matches of a pattern sorted).

  Raises:
    FileNotFoundError: a path does not exist or a pattern matches nothing (the message names it).
    ValueError: a file is not of a known kind.
  """
  files = []
  for pattern in patterns:
    expanded = os.path.expanduser(pattern)
    if any(c in expanded for c in _GLOB_CHARS):
      matches = sorted(glob.glob(expanded, recursive=True))
      if not matches:
        raise FileNotFoundError(f"data glob pattern {pattern!r} matches no file")
    elif os.path.isdir(expanded):
      matches = sorted(os.path.join(root, f) for root, _, names in os.walk(expanded) for f in names if _kind(f))
      if not matches:
        raise FileNotFoundError(f"data directory {pattern!r} holds no .txt, .jsonl or .array_record file")
    elif os.path.exists(expanded):
      matches = [expanded]
    else:
      raise FileNotFoundError(f"data file {pattern!r} does not exist")
    for path in matches:
      if os.path.isdir(path):
        continue
      if _kind(path) is None:
        raise ValueError(f"data file {path!r} is of an unknown kind: expected .txt, .jsonl or .array_record")
      files.append(path)
  return files


class TextFilesSource(grain.sources.RandomAccessDataSource):
  """One document per plain-text file."""

  def __init__(self, paths: Sequence[str]):
    self._paths = list(paths)

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> str:
    with open(self._paths[index], encoding="utf-8") as f:
      return f.read()


class JsonlSource(grain.sources.RandomAccessDataSource):
  """One document per JSONL line, read by byte offset (thread-safe ``os.pread``)."""

  def __init__(self, path: str, text_field: str):
    self._path = path
    self._text_field = text_field
    starts, ends, offset = [], [], 0
    with open(path, "rb") as f:
      for line in f:
        if line.strip():
          starts.append(offset)
          ends.append(offset + len(line))
        offset += len(line)
    self._starts = np.asarray(starts, np.int64)
    self._ends = np.asarray(ends, np.int64)
    self._fd = os.open(path, os.O_RDONLY)

  def __len__(self) -> int:
    return len(self._starts)

  def __getitem__(self, index: int) -> str:
    start, end = int(self._starts[index]), int(self._ends[index])
    line = os.pread(self._fd, end - start, start)
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{self._path}: record {index} is not valid JSON: {e}") from e
    if not isinstance(record, dict) or not isinstance(record.get(self._text_field), str):
      raise ValueError(f"{self._path}: record {index} has no string field {self._text_field!r} "
                       "(set DataConfig.text_field)")
    return record[self._text_field]

  def __del__(self):
    fd = getattr(self, "_fd", None)
    if fd is not None:
      os.close(fd)


def _decode_utf8(record: bytes) -> str:
  return record.decode("utf-8")


def document_dataset(config: DataConfig) -> grain.MapDataset:
  """All documents of ``config.paths`` as one ``MapDataset`` of strings, in path order."""
  files = resolve_paths(config.paths)
  parts, run = [], []  # Consecutive files of one kind share a source.

  def flush():
    if not run:
      return
    kind = _kind(run[0])
    if kind == "txt":
      parts.append(grain.MapDataset.source(TextFilesSource(run)))
    elif kind == "array_record":
      parts.append(grain.MapDataset.source(grain.sources.ArrayRecordDataSource(list(run))).map(_decode_utf8))
    else:
      parts.extend(grain.MapDataset.source(JsonlSource(p, config.text_field)) for p in run)
    run.clear()

  for path in files:
    if run and _kind(path) != _kind(run[0]):
      flush()
    run.append(path)
  flush()
  parts = [p for p in parts if len(p)]
  if not parts:
    raise ValueError(f"text data {list(config.paths)} holds no documents")
  return parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)


class Tokenize:
  """Document -> {"tokens": int32 ids + EOD}."""

  def __init__(self, tokenizer: Tokenizer):
    self._tokenizer = tokenizer

  def __call__(self, text: str) -> dict[str, np.ndarray]:
    ids = self._tokenizer.encode(text)
    ids.append(self._tokenizer.eos_id)
    return {"tokens": np.asarray(ids, np.int32)}


def check_enough_text(documents: grain.MapDataset, tokenizer: Tokenizer, row_len: int, paths: Sequence[str]) -> None:
  """Raises ValueError unless the documents hold at least one row of tokens (reads only as many as it needs)."""
  total = 0
  for index in range(len(documents)):
    total += len(tokenizer.encode(documents[index])) + 1
    if total >= row_len:
      return
  raise ValueError(f"text data {list(paths)} is too short: {total} tokens (EOD included) in {len(documents)} "
                   f"documents, but one row needs seq_len + 1 = {row_len}")


def _stream_seed(seed: int) -> int:
  return int(np.random.SeedSequence([seed % 2**63, 0x7E47]).generate_state(1)[0])


def _stack_rows(rows: tuple[dict[str, np.ndarray], ...]) -> dict[str, np.ndarray]:
  tokens = np.stack([row["tokens"] for row in rows])
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones(tokens[:, 1:].shape, np.float32)}


def text_batches(config: DataConfig, tokenizer: Tokenizer, rows: Sequence[int]) -> grain.IterDataset:
  """Batches of the given rows of each global batch, packed from ``config.paths`` (see the module docstring)."""
  documents = document_dataset(config)
  row_len = config.seq_len + 1
  check_enough_text(documents, tokenizer, row_len, config.paths)
  ordered = documents.shuffle(seed=_stream_seed(config.seed)) if config.shuffle else documents
  ordered = ordered.repeat()
  no_threads = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  streams = []
  for row in rows:
    tokenized = ordered[row::config.global_batch_size].map(Tokenize(tokenizer)).to_iter_dataset(no_threads)
    streams.append(grain.experimental.ConcatThenSplitIterDataset(tokenized, length_struct={"tokens": row_len}))
  return grain.experimental.ZipIterDataset(streams).map(_stack_rows)
