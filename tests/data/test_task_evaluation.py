"""Phone-book and task evaluation sets and the teacher-forced answer accuracy."""

import re

import numpy as np
import pytest

from ssmjax.data import (DataConfig, PhonebookTask, answer_accuracy, phonebook_accuracy, phonebook_book_size_for_length,
                         phonebook_eval_set, task_eval_set)
from ssmjax.tokenizers import load_tokenizer

BYTE = load_tokenizer("byte")
V = BYTE.vocab_size


def _one_hot(ids):
  return np.eye(V, dtype=np.float32)[ids]


def lookup_oracle(inputs):
  """A predictor that solves the phone book from the inputs alone: after '?name:' it copies that name's number."""
  logits = np.zeros(inputs.shape + (V,), np.float32)
  for b, row in enumerate(inputs):
    text = "".join(chr(t) if t < 256 else "\0" for t in row)
    book = dict(re.findall(r"^([a-z]+):([0-9]+)$", text.split("\n\n")[0], re.MULTILINE))
    for match in re.finditer(r"\?([a-z]+):", text):
      number = book[match.group(1)]
      for k, digit in enumerate(number):
        position = match.end() - 1 + k  # The input position whose next token is digit k.
        if position < len(row):
          logits[b, position, ord(digit)] = 1.0
  return logits


def test_lookup_oracle_scores_one_and_a_blind_guess_scores_zero():
  assert phonebook_accuracy(lookup_oracle, num_examples=10, book_size=12, seed=5, batch_size=4) == 1.0
  zeros = lambda inputs: _one_hot(np.full(inputs.shape, ord("0")))
  assert phonebook_accuracy(zeros, num_examples=10, book_size=12, seed=5, batch_size=4) < 0.1


def test_a_query_counts_only_when_every_answer_token_is_right():
  # Given an oracle that is wrong on the last digit of the first scored query of row 0, then exactly that query fails.
  eval_set = phonebook_eval_set(num_examples=3, book_size=5, seed=1, task=PhonebookTask(num_queries=2))
  assert eval_set.num_queries == 6

  def predict(inputs):
    assert inputs.shape == eval_set.inputs.shape
    logits = _one_hot(eval_set.targets)
    last_digit = np.flatnonzero(eval_set.query_ids[0] == 0)[-1]
    logits[0, last_digit] = _one_hot(np.array((eval_set.targets[0, last_digit] + 1) % 256))
    return logits

  assert answer_accuracy(predict, eval_set, batch_size=3) == pytest.approx(5 / 6)


def test_demonstration_queries_are_not_scored():
  task = PhonebookTask(num_shots=2, num_queries=1)
  eval_set = phonebook_eval_set(num_examples=4, book_size=6, seed=0, task=task)
  assert eval_set.num_queries == 4
  for r in range(4):
    text = BYTE.decode(eval_set.inputs[r])
    answers = re.findall(r"\?[a-z]+:([0-9]+)", text + BYTE.decode(eval_set.targets[r, -1:]))
    scored = "".join(chr(t) for t in eval_set.targets[r][eval_set.query_ids[r] >= 0])
    assert len(answers) == 3 and scored == answers[2]


def test_eval_sets_are_deterministic_and_batch_padding_is_ignored():
  a = phonebook_eval_set(num_examples=5, book_size=7, seed=3)
  b = phonebook_eval_set(num_examples=5, book_size=7, seed=3)
  np.testing.assert_array_equal(a.inputs, b.inputs)
  assert not np.array_equal(a.inputs, phonebook_eval_set(num_examples=5, book_size=7, seed=4).inputs)
  shapes = []

  def predict(inputs):
    shapes.append(inputs.shape)
    return lookup_oracle(inputs)

  assert answer_accuracy(predict, a, batch_size=4) == 1.0
  assert shapes == [(4, a.inputs.shape[1])] * 2  # The last batch is padded to a fixed shape.


def test_context_length_picks_the_largest_book_that_fits():
  task = PhonebookTask()
  size = phonebook_book_size_for_length(200, task)
  eval_set = phonebook_eval_set(num_examples=4, context_len=200, seed=0, task=task, pad_to_multiple=16)
  assert eval_set.lengths.max() <= 200 and eval_set.inputs.shape[1] % 16 == 0
  bigger = phonebook_eval_set(num_examples=1, book_size=size + 1, seed=0, task=task)
  assert bigger.lengths[0] > 200
  with pytest.raises(ValueError, match="context_len=5"):
    phonebook_book_size_for_length(5, task)


def test_eval_set_needs_exactly_one_size():
  with pytest.raises(ValueError, match="exactly one of book_size and context_len"):
    phonebook_eval_set(num_examples=1)
  with pytest.raises(ValueError, match="exactly one"):
    phonebook_eval_set(num_examples=1, book_size=3, context_len=100)


@pytest.mark.parametrize("task", ["phonebook", "mqar", "copying"])
def test_task_eval_sets_score_a_perfect_predictor_one(task):
  eval_set = task_eval_set(DataConfig(), task, num_examples=6, seed=2)
  perfect = lambda inputs: _one_hot(eval_set.targets)[:len(inputs)]
  assert answer_accuracy(perfect, eval_set, batch_size=6) == 1.0
  shifted = lambda inputs: _one_hot(eval_set.inputs)[:len(inputs)]  # Repeats the current token: never the answer.
  assert answer_accuracy(shifted, eval_set, batch_size=6) < 0.5


def test_predictor_with_wrong_output_shape_is_named():
  eval_set = phonebook_eval_set(num_examples=2, book_size=3, seed=0)
  with pytest.raises(ValueError, match="predict_fn returned logits of shape"):
    answer_accuracy(lambda inputs: np.zeros((2, 3)), eval_set, batch_size=2)
