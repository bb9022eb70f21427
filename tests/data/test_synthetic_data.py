"""Synthetic tasks: content checked by parsing the text back, answer-only loss masks, determinism, resume, sharding."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest

from ssmjax.data import CopyingTask, DataConfig, MQARTask, PhonebookTask, data_vocab_size, make_train_iterator
from ssmjax.tokenizers import load_tokenizer

BYTE = load_tokenizer("byte")
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "data")
SMALL = DataConfig(seq_len=128, global_batch_size=4, seed=3, phonebook=PhonebookTask(max_book_size=6),
                   mqar=MQARTask(max_pairs=8), copying=CopyingTask(max_len=16), prefetch=0)


def _take(config, steps, **host):
  iterator = make_train_iterator(config, **host)
  return [next(iterator) for _ in range(steps)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _row_text_and_answers(batch, r):
  """The row as text (PAD dropped, EOD as '#') and the answer characters (targets under the loss mask)."""
  tokens = np.concatenate([batch["inputs"][r, :1], batch["targets"][r]])
  assert BYTE.eos_id not in tokens[tokens < 256] and 35 not in tokens  # '#' is free to stand for EOD.
  text = "".join("#" if t == BYTE.eos_id else chr(t) for t in tokens if t != BYTE.pad_id)
  masked = batch["targets"][r][batch["loss_mask"][r] > 0]
  return text, "".join(chr(t) for t in masked)


def _expected_answers(text):
  """Parses every example of a row and returns the answers the tasks define, in order."""
  answers = []
  for example in text.split("#")[:-1]:  # Every example, the last included, ends with EOD.
    if "?" in example:  # Phone book: "name:number\n..." "\n" then "?name:number\n" queries.
      book_text, queries = example.split("\n\n", 1)
      book = dict(line.split(":") for line in book_text.split("\n"))
      for name, number in re.findall(r"\?([a-z]+):([0-9]+)\n", queries):
        assert book[name] == number
        answers.append(number)
    elif re.fullmatch(r"([a-z]{2}[0-9])+\|([a-z]{2}[0-9])+\n", example):  # MQAR with the default key_len 2.
      pairs, queries = example[:-1].split("|")
      table = {pairs[i:i + 2]: pairs[i + 2] for i in range(0, len(pairs), 3)}
      assert len(table) == len(pairs) // 3  # Keys are distinct.
      for i in range(0, len(queries), 3):
        assert table[queries[i:i + 2]] == queries[i + 2]
        answers.append(queries[i + 2])
    else:  # Copying.
      source, copy = example[:-1].split("|")
      assert source == copy
      answers.append(copy)
  return "".join(answers)


def test_batch_shapes_dtypes_and_shift():
  (batch,) = _take(SMALL, 1)
  assert batch.keys() == {"inputs", "targets", "loss_mask"}
  for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("loss_mask", np.float32)]:
    assert batch[key].shape == (4, 128) and batch[key].dtype == dtype
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert batch["inputs"].max() < data_vocab_size(SMALL) and batch["inputs"].min() >= 0


@pytest.mark.parametrize("task", ["phonebook", "mqar", "copying"])
def test_loss_mask_covers_exactly_the_answers(task):
  # Given rows of one task, when the text is parsed back, then every answer is right and masked, and nothing else is.
  config = dataclasses.replace(SMALL, tasks=(task,))
  for batch in _take(config, 2):
    for r in range(config.global_batch_size):
      text, masked = _row_text_and_answers(batch, r)
      assert masked and masked == _expected_answers(text)
      tokens = np.concatenate([batch["inputs"][r, :1], batch["targets"][r]])
      pads = tokens == BYTE.pad_id
      assert not pads.any() or pads[np.argmax(pads):].all()  # Padding only at the end.


@pytest.mark.parametrize("spec", ["tiny_sp.model", "tiny_hf/tokenizer.json"])
def test_other_tokenizers_keep_answers_and_masks_aligned(spec):
  # Segments are tokenized one by one, so the masked tokens decode to exactly the answers (SentencePiece adds a
  # word-boundary space at each segment start; spaces are dropped before comparing).
  tokenizer = load_tokenizer(os.path.join(FIXTURES, spec))
  (batch,) = _take(dataclasses.replace(SMALL, tokenizer=os.path.join(FIXTURES, spec)), 1)
  assert batch["inputs"].max() < tokenizer.vocab_size
  for r in range(SMALL.global_batch_size):
    tokens = np.concatenate([batch["inputs"][r, :1], batch["targets"][r]])
    cuts = np.flatnonzero(tokens == tokenizer.eos_id)  # EOD after each example; PAD is EOD for these tokenizers.
    pieces = [tokenizer.decode(piece).replace(" ", "") for piece in np.split(tokens, cuts + 1)]
    text = "".join(piece + "#" for piece in pieces if piece)
    masked = tokenizer.decode(batch["targets"][r][batch["loss_mask"][r] > 0]).replace(" ", "")
    assert masked == _expected_answers(text)


def test_rows_are_filled_with_several_whole_examples():
  (batch,) = _take(dataclasses.replace(SMALL, tasks=("copying",), copying=CopyingTask(min_len=4, max_len=8)), 1)
  eods = (batch["targets"] == BYTE.eos_id).sum(axis=1)
  assert (eods >= 128 // (2 * 8 + 3)).all()


def test_tasks_are_mixed_by_weight():
  config = dataclasses.replace(SMALL, task_weights=(2.0, 1.0, 1.0), global_batch_size=8)
  kinds = []
  for batch in _take(config, 2):
    for r in range(8):
      text, _ = _row_text_and_answers(batch, r)
      kinds.append("phonebook" if "?" in text else "copying" if re.match(r"[a-z]+\|", text) else "mqar")
  assert kinds.count("phonebook") == 8 and kinds.count("mqar") == 4 and kinds.count("copying") == 4


def test_phonebook_few_shot_format_is_configurable():
  task = PhonebookTask(min_book_size=3, max_book_size=3, number_len=3, num_shots=1, num_queries=1,
                       book_format="{name} {number};", query_format="Q {name} A {number}.", separator="|")
  (batch,) = _take(dataclasses.replace(SMALL, tasks=("phonebook",), phonebook=task), 1)
  text, masked = _row_text_and_answers(batch, 0)
  example = text.split("#")[0]
  assert re.fullmatch(r"([a-z]{3} [0-9]{3};){3}\|(Q [a-z]{3} A [0-9]{3}\.){2}", example), example
  assert masked.startswith("".join(re.findall(r"A ([0-9]{3})\.", example)))  # In training shots are scored too.


def test_same_seed_same_batches_and_other_seed_other_batches():
  first = _take(SMALL, 3)
  _assert_batches_equal(first, _take(SMALL, 3))
  other = _take(dataclasses.replace(SMALL, seed=4), 3)
  assert not np.array_equal(first[0]["inputs"], other[0]["inputs"])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_from_json_state_continues_exactly(prefetch):
  # Given an uninterrupted run, when another run stops after 3 batches, stores its state as JSON (as grain's
  # checkpoint handler does) and a fresh iterator restores it, then the next batches are identical.
  config = dataclasses.replace(SMALL, prefetch=prefetch)
  reference = _take(config, 6)
  interrupted = make_train_iterator(config)
  for _ in range(3):
    next(interrupted)
  state = json.loads(json.dumps(interrupted.get_state()))
  resumed = make_train_iterator(config)
  resumed.set_state(state)
  _assert_batches_equal([next(resumed) for _ in range(3)], reference[3:])


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_together_yield_the_single_host_global_batch(process_count):
  single = _take(SMALL, 3)
  per_host = [_take(SMALL, 3, process_index=p, process_count=process_count) for p in range(process_count)]
  for step in range(3):
    for key in single[step]:
      stacked = np.concatenate([host[step][key] for host in per_host])
      np.testing.assert_array_equal(stacked, single[step][key])
  rows = [tuple(row) for host in per_host for batch in host for row in batch["inputs"]]
  assert len(set(rows)) == len(rows)  # No row twice.


@pytest.mark.parametrize("config, match", [
    (DataConfig(tasks=("phonebook", "sorting")), "unknown task 'sorting'"),
    (DataConfig(tasks=()), "tasks is empty"),
    (DataConfig(source="parquet"), "unknown source 'parquet'"),
    (DataConfig(seq_len=0), "seq_len"),
    (DataConfig(global_batch_size=0), "global_batch_size"),
    (DataConfig(seq_len=32), "largest phonebook example has .* tokens"),
    (DataConfig(task_weights=(1.0,)), "task_weights"),
    (DataConfig(phonebook=PhonebookTask(max_book_size=30, name_len=1)), "max_book_size=30"),
    (DataConfig(phonebook=PhonebookTask(query_format="{number} is {name}")), "query_format"),
    (DataConfig(mqar=MQARTask(min_pairs=5, max_pairs=4)), "MQARTask pairs"),
], ids=["unknown_task", "no_task", "unknown_source", "seq_len", "batch", "example_too_long", "weights", "names",
        "query_format", "pairs"])
def test_bad_config_is_rejected_with_a_clear_error(config, match):
  with pytest.raises(ValueError, match=match):
    make_train_iterator(config)


def test_global_batch_must_divide_among_hosts():
  with pytest.raises(ValueError, match="global_batch_size=8 is not divisible by process_count=3"):
    make_train_iterator(DataConfig(), process_index=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    make_train_iterator(DataConfig(), process_index=2, process_count=2)
