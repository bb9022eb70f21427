"""Token scoring and perplexity: batched, bucketed scores equal a plain per-token log-softmax loop; windows predict
every token exactly once; files of every kind are read; bad input gets clear errors."""

import json
import math

import numpy as np
import pytest

from ssmjax.evaluation import (PerplexitySettings, ScoreRequest, TokenScorer, document_windows, perplexity_of_files,
                               perplexity_of_texts)
from ssmjax.tokenizers import load_tokenizer
from tiny_eval_model import CONFIG, params, reference_logprobs

BYTES = load_tokenizer("byte")
TEXT = "The quick brown fox jumps over"
# Documents that are prefixes of TEXT, and a sequence that starts with EOD + TEXT + EOD: the reference scores of all of
# them come from one forward pass (see reference_logprobs); every row fits the buckets 16 and 32.
DOCS = [TEXT, "", TEXT[:12], TEXT[:2]]
SEQUENCE = [BYTES.eos_id, *BYTES.encode(TEXT), BYTES.eos_id, *BYTES.encode(" the lazy dog")]


def test_token_scorer_matches_the_per_token_reference_across_batches_buckets_and_truncation():
  # Given prefixes of one sequence (two buckets, a partial last batch) and a request longer than max_length
  sequence = SEQUENCE[:40]
  lengths_scored = [(5, 2), (20, 19), (9, 1), (40, 7), (2, 1)]
  requests = [ScoreRequest(sequence[:n], k) for n, k in lengths_scored]
  # When they are scored with batch 2 and max_length 32
  scores = TokenScorer(CONFIG, params(), batch_size=2, max_length=32).score(requests)
  # Then each equals the reference on the same tokens (the long one left-truncated to 33), in the order given
  whole, truncated = reference_logprobs(SEQUENCE)[:39], reference_logprobs(sequence[-33:])
  for (n, k), result in zip(lengths_scored, scores):
    expected = truncated[-k:] if n > 33 else whole[n - 1 - k:n - 1]
    np.testing.assert_allclose(result.logprobs, expected, rtol=0, atol=2e-5)
    assert result.logprob == pytest.approx(expected.sum(), abs=1e-4)
    assert result.is_greedy == bool(np.all(result.greedy)) and result.greedy.shape == (k,)


def test_token_scorer_rejects_bad_requests():
  scorer = TokenScorer(CONFIG, params(), batch_size=2, max_length=8)
  with pytest.raises(ValueError, match=r"request 0: num_scored must be in \[1, len\(tokens\) - 1\]"):
    scorer.score([ScoreRequest([1, 2, 3], 3)])
  with pytest.raises(ValueError, match="request 0: 9 scored tokens do not fit max_length=8"):
    scorer.score([ScoreRequest(list(range(12)), 9)])
  with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=264\)"):
    scorer.score([ScoreRequest([1, 264], 1)])
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    TokenScorer(CONFIG, params(), batch_size=0)


@pytest.mark.parametrize("total,seq_len,stride", [(2, 4, None), (10, 4, None), (10, 4, 1), (11, 4, 3), (5, 4, 4)])
def test_document_windows_predict_every_token_once_with_at_most_seq_len_inputs(total, seq_len, stride):
  tokens = list(range(100, 100 + total))
  windows = document_windows(tokens, seq_len, stride)
  predicted = [t for w in windows for t in w.tokens[-w.num_scored:]]
  assert predicted == tokens[1:]
  for w in windows:
    assert len(w.tokens) - 1 <= seq_len
    assert w.tokens == tokens[tokens.index(w.tokens[0]):tokens.index(w.tokens[0]) + len(w.tokens)]  # contiguous
  if stride is not None and stride < seq_len:  # every window after the first keeps seq_len - stride context tokens
    assert all(len(w.tokens) - w.num_scored >= seq_len - stride for w in windows[1:])


def _independent_nll(texts, score_eod=False):
  """(sum of -log p, count) over every token of every document given EOD and the document's earlier tokens."""
  tokenizer = BYTES
  nll, count = 0.0, 0
  for text in texts:
    tokens = [tokenizer.eos_id] + tokenizer.encode(text) + ([tokenizer.eos_id] if score_eod else [])
    logprobs = reference_logprobs(tokens)
    nll -= logprobs.sum()
    count += logprobs.size
  return nll, count


def test_perplexity_is_exp_of_the_mean_nll_computed_token_by_token():
  settings = PerplexitySettings(seq_len=32, batch_size=2, per_document=True)
  result = perplexity_of_texts(CONFIG, params(), load_tokenizer("byte"), DOCS, settings)
  nll, count = _independent_nll(DOCS)
  assert result["num_tokens"] == count == sum(len(d.encode()) for d in DOCS)
  assert result["num_documents"] == 3  # the empty document has nothing to predict
  assert result["nll"] == pytest.approx(nll, rel=1e-5)
  assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
  assert result["bits_per_byte"] == pytest.approx(result["nll"] / (result["num_bytes"] * math.log(2)), rel=1e-12)
  assert [d["index"] for d in result["documents"]] == [0, 2, 3]
  json.dumps(result)  # JSON-able
  # With score_eod, the EOD after each document is predicted too.
  with_eod = perplexity_of_texts(CONFIG, params(), BYTES, DOCS[:1], PerplexitySettings(seq_len=32, score_eod=True,
                                                                                        batch_size=2))
  nll, count = _independent_nll(DOCS[:1], score_eod=True)
  assert with_eod["num_tokens"] == count == len(TEXT) + 1 and with_eod["nll"] == pytest.approx(nll, rel=1e-5)


def test_perplexity_with_windows_sums_the_scores_of_its_windows():
  # A document longer than seq_len: the result is the sum of its windows' scores (each window checked against the
  # reference in the TokenScorer test, the windows' coverage in the document_windows tests).
  tokenizer = load_tokenizer("byte")
  settings = PerplexitySettings(seq_len=16, stride=8, batch_size=2)
  result = perplexity_of_texts(CONFIG, params(), tokenizer, DOCS[:1], settings)
  windows = document_windows([tokenizer.eos_id] + tokenizer.encode(DOCS[0]), 16, 8)
  expected = -sum(s.logprob for s in TokenScorer(CONFIG, params(), batch_size=2, max_length=16).score(windows))
  assert len(windows) > 2 and result["num_tokens"] == len(DOCS[0])
  assert result["nll"] == pytest.approx(expected, rel=1e-9)


def test_perplexity_reads_txt_jsonl_and_array_record_files(tmp_path):
  # Given the same documents as a .txt file, JSONL lines and ArrayRecord records
  (tmp_path / "a.txt").write_text(DOCS[0])
  (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in DOCS[1:3]) + "\n")
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(str(tmp_path / "c.array_record"), "group_size:1")
  writer.write(DOCS[3].encode())
  writer.close()
  settings = PerplexitySettings(seq_len=32, batch_size=2, text_field="body")
  paths = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), str(tmp_path / "c.array_record")]
  # When perplexity reads them
  result = perplexity_of_files(CONFIG, params(), load_tokenizer("byte"), paths, settings)
  # Then it equals the reference over the same documents in path order
  nll, count = _independent_nll(DOCS)
  assert result["num_tokens"] == count and result["nll"] == pytest.approx(nll, rel=1e-5)
  assert result["paths"] == paths


def test_perplexity_reports_bad_input_clearly(tmp_path):
  tokenizer = load_tokenizer("byte")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    perplexity_of_files(CONFIG, params(), tokenizer, [str(tmp_path / "missing.jsonl")])
  (tmp_path / "x.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
  with pytest.raises(ValueError, match="no string field 'text'"):
    perplexity_of_files(CONFIG, params(), tokenizer, [str(tmp_path / "x.jsonl")], PerplexitySettings(seq_len=16))
  with pytest.raises(ValueError, match="no document has a token to score"):
    perplexity_of_texts(CONFIG, params(), tokenizer, ["", ""])
  with pytest.raises(ValueError, match=r"stride must be an int in \[1, seq_len=8\]"):
    PerplexitySettings(seq_len=8, stride=9)
  small = CONFIG.replace(vocab_size=200)
  with pytest.raises(ValueError, match=r"tokenizer's vocabulary \(258\) is larger than the model's \(200\)"):
    perplexity_of_texts(small, params(), tokenizer, ["x"])
