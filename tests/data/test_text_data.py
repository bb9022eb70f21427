"""Text data: reading txt / JSONL / ArrayRecord, packing with EOD, per-epoch shuffling, resume, sharding, errors."""

import dataclasses
import json
import os

import numpy as np
import pytest

from ssmjax.data import DataConfig, make_train_iterator
from ssmjax.data.text import document_dataset
from ssmjax.tokenizers import load_tokenizer

BYTE = load_tokenizer("byte")
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "data")


def _documents(count, prefix):
  """Distinct documents of varied lengths (some longer than a row) that name themselves."""
  return [f"<{prefix}{i}>" + "abcdefghij"[:i % 10] * (1 + i % 4) + f"</{prefix}{i}>" for i in range(count)]


def _write_jsonl(path, docs, field="text"):
  with open(path, "w") as f:
    for doc in docs:
      f.write(json.dumps({field: doc, "id": 0}) + "\n\n")  # Blank lines are skipped.


def _write_array_record(path, docs):
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(str(path), "group_size:1")
  for doc in docs:
    writer.write(doc.encode("utf-8"))
  writer.close()


@pytest.fixture
def corpus(tmp_path):
  """12 documents: 3 .txt files, 5 in a JSONL file, 4 in an ArrayRecord file."""
  docs = _documents(12, "d")
  for i, doc in enumerate(docs[:3]):
    (tmp_path / f"doc{i}.txt").write_text(doc)
  _write_jsonl(tmp_path / "part.jsonl", docs[3:8])
  _write_array_record(tmp_path / "part.array_record", docs[8:])
  paths = (str(tmp_path / "*.txt"), str(tmp_path / "part.jsonl"), str(tmp_path / "part.array_record"))
  return docs, DataConfig(source="text", paths=paths, seq_len=24, global_batch_size=4, seed=1, prefetch=0)


def _full_rows(batch):
  return np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)


def _stream_text(batches, row):
  """One row's packed token stream over consecutive batches, EOD shown as '#'."""
  tokens = np.concatenate([_full_rows(b)[row] for b in batches])
  return "".join("#" if t == BYTE.eos_id else chr(t) for t in tokens)


def _take(config, steps, **host):
  iterator = make_train_iterator(config, **host)
  return [next(iterator) for _ in range(steps)]


def test_reads_txt_jsonl_and_array_record_documents_in_path_order(corpus):
  docs, config = corpus
  assert list(document_dataset(config)) == docs


def test_packing_puts_eod_between_whole_documents_and_shifts_targets(corpus):
  # Given 4 streams over 12 documents, when each stream's rows are concatenated, then they read as whole documents
  # each followed by EOD, and the first epoch gives every document to exactly one stream.
  docs, config = corpus
  batches = _take(config, 12)
  first_epoch = []
  for row in range(config.global_batch_size):
    pieces = _stream_text(batches, row).split("#")
    assert all(piece in docs for piece in pieces[:-1])
    first_epoch += pieces[:len(range(row, len(docs), config.global_batch_size))]
  assert sorted(first_epoch) == sorted(docs)
  for batch in batches:
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(batch["loss_mask"], np.ones((4, 24), np.float32))
    assert batch["inputs"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32


def test_documents_are_shuffled_differently_each_epoch_unless_disabled(corpus):
  docs, config = corpus
  config = dataclasses.replace(config, global_batch_size=1, seq_len=8)
  pieces = _stream_text(_take(config, 150), 0).split("#")
  first, second = pieces[:12], pieces[12:24]
  assert sorted(first) == sorted(docs) == sorted(second) and first != docs and first != second
  unshuffled = _stream_text(_take(dataclasses.replace(config, shuffle=False), 40), 0).split("#")
  assert unshuffled[:12] == docs


def test_other_tokenizers_pack_with_their_eos(corpus):
  _, config = corpus
  for spec in (os.path.join(FIXTURES, "tiny_sp.model"), os.path.join(FIXTURES, "tiny_hf", "tokenizer.json")):
    tokenizer = load_tokenizer(spec)
    batches = _take(dataclasses.replace(config, tokenizer=spec), 4)
    tokens = np.concatenate([_full_rows(b)[0] for b in batches])
    assert tokens.max() < tokenizer.vocab_size
    first_doc = tokens[:np.argmax(tokens == tokenizer.eos_id)]
    assert tokenizer.decode(first_doc) in corpus[0]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_from_json_state_continues_exactly(corpus, prefetch):
  # Given an uninterrupted run, when another stops at each of several points, stores its state as JSON and a fresh
  # iterator restores it, then the following batches match the uninterrupted run (packing remainders included).
  _, config = corpus
  config = dataclasses.replace(config, prefetch=prefetch)
  reference = _take(config, 10)
  for stop in (0, 1, 4, 7):
    interrupted = make_train_iterator(config)
    for _ in range(stop):
      next(interrupted)
    resumed = make_train_iterator(config)
    resumed.set_state(json.loads(json.dumps(interrupted.get_state())))
    for step in range(stop, stop + 3):
      batch = next(resumed)
      for key in batch:
        np.testing.assert_array_equal(batch[key], reference[step][key], err_msg=f"{key} after stop {stop}")


def test_same_seed_same_batches(corpus):
  _, config = corpus
  a, b = _take(config, 3), _take(config, 3)
  c = _take(dataclasses.replace(config, seed=2), 3)
  assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
  assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_hosts_together_yield_the_single_host_global_batch(corpus):
  _, config = corpus
  single = _take(config, 5)
  hosts = [_take(config, 5, process_index=p, process_count=2) for p in range(2)]
  for step in range(5):
    for key in single[step]:
      np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts]), single[step][key])


def test_directory_path_reads_known_files(corpus, tmp_path):
  docs, config = corpus
  assert sorted(document_dataset(dataclasses.replace(config, paths=(str(tmp_path),)))) == sorted(docs)


def test_missing_data_file_and_empty_glob_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    make_train_iterator(DataConfig(source="text", paths=(str(tmp_path / "missing.jsonl"),)))
  with pytest.raises(FileNotFoundError, match=r"glob pattern .*shard-\*\.txt.* matches no file"):
    make_train_iterator(DataConfig(source="text", paths=(str(tmp_path / "shard-*.txt"),)))
  with pytest.raises(ValueError, match="paths is empty"):
    make_train_iterator(DataConfig(source="text"))


def test_missing_tokenizer_file_is_named(corpus):
  _, config = corpus
  with pytest.raises(FileNotFoundError, match="absent.model"):
    make_train_iterator(dataclasses.replace(config, tokenizer="/no/such/absent.model"))


def test_text_too_short_for_one_row_is_rejected(tmp_path):
  (tmp_path / "short.txt").write_text("only a few words")  # 16 bytes + EOD = 17 tokens.
  config = DataConfig(source="text", paths=(str(tmp_path / "short.txt"),), seq_len=16)
  with pytest.raises(ValueError, match=r"too short: 17 tokens .* seq_len \+ 1 = 18") as error:
    make_train_iterator(dataclasses.replace(config, seq_len=17))
  assert "short.txt" in str(error.value)
  assert next(make_train_iterator(dataclasses.replace(config, global_batch_size=1)))["inputs"].shape == (1, 16)


def test_jsonl_without_the_text_field_is_named(tmp_path):
  _write_jsonl(tmp_path / "a.jsonl", ["x" * 100], field="content")
  config = DataConfig(source="text", paths=(str(tmp_path / "a.jsonl"),), seq_len=16)
  with pytest.raises(ValueError, match=r"a.jsonl.*no string field 'text'"):
    make_train_iterator(config)
  assert next(make_train_iterator(dataclasses.replace(config, text_field="content", prefetch=0)))


def test_unknown_file_kind_is_named(tmp_path):
  (tmp_path / "data.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match="data.csv"):
    make_train_iterator(DataConfig(source="text", paths=(str(tmp_path / "data.csv"),)))
