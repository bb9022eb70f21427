"""The lm-evaluation-harness model ``ssmjax``: local multiple-choice, generate_until and rolling-loglikelihood tasks
(YAML and data written by the tests, nothing downloaded) give exactly ssmjax's own scores and generations."""

import json
import os
import sys
import tempfile

import numpy as np
import pytest

# Nothing may be downloaded: the harness loads the local JSONL through datasets' packaged "json" builder.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ssmjax_test_hf_datasets_"))
lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is optional: pip install -e .[eval]")

import ssmjax  # noqa: E402
from ssmjax.evaluation import PerplexitySettings, perplexity_of_texts  # noqa: E402
from ssmjax.evaluation import lm_eval_adapter  # noqa: E402
from ssmjax.tokenizers import load_tokenizer  # noqa: E402
from tiny_eval_model import CONFIG, params, reference_logprobs  # noqa: E402

BYTES = load_tokenizer("byte")
# Choices that are prefixes of the longest one: a doc's reference scores come from one forward pass.
MC_DOCS = [{"question": "Q: 2+2? A:", "choices": [" 4", " 44", " 444"], "answer": 0},
           {"question": "Q: red or blue? A: ", "choices": ["b", "bl", "blue"], "answer": 2}]
GEN_DOCS = [{"prompt": "abc:", "target": "x"}, {"prompt": "xyz:", "target": "y"}, {"prompt": "one:", "target": "z"}]
ROLLING_DOCS = [{"text": "The quick brown fox jumps over"}]
MAX_GEN_TOKS = 6

MC_YAML = """task: ssmjax_test_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
GEN_YAML = """task: ssmjax_test_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["!"]
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: exact_match
"""
ROLLING_YAML = """task: ssmjax_test_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def write_tasks(directory) -> str:
  """The three task YAMLs and their JSONL data in ``directory/tasks``; returns that directory."""
  tasks = os.path.join(str(directory), "tasks")
  os.makedirs(tasks, exist_ok=True)
  for name, yaml, docs in (("mc", MC_YAML, MC_DOCS), ("gen", GEN_YAML, GEN_DOCS),
                           ("rolling", ROLLING_YAML, ROLLING_DOCS)):
    data = os.path.join(tasks, f"{name}.jsonl")
    with open(data, "w") as f:
      f.write("".join(json.dumps(d) + "\n" for d in docs))
    with open(os.path.join(tasks, f"{name}.yaml"), "w") as f:
      f.write(yaml.format(data=data, max_gen_toks=MAX_GEN_TOKS))
  return tasks


def reference_loglikelihood(context: str, continuation: str) -> float:
  """log p(continuation | context) from the slow reference, with lm-eval's split: the context's trailing spaces
  belong to the continuation."""
  stripped = context.rstrip()
  tokens = BYTES.encode(context + continuation)
  scored = len(tokens) - len(BYTES.encode(stripped))
  return float(reference_logprobs(tokens)[-scored:].sum())


def reference_generation(prompt: str, until: list[str]) -> str:
  """Greedy ssmjax.generate of one unpadded prompt, EOS dropped, cut at the first stop string."""
  out = ssmjax.generate(CONFIG, params(), [BYTES.encode(prompt)], MAX_GEN_TOKS, eos_id=BYTES.eos_id)
  ids = [int(t) for t in np.asarray(out.tokens[0, :int(out.lengths[0])]) if int(t) != BYTES.eos_id]
  text = BYTES.decode(ids)
  cuts = [text.find(s) for s in until if s in text]
  return text[:min(cuts)] if cuts else text


@pytest.fixture(scope="module")
def harness_result(tmp_path_factory):
  tasks = write_tasks(tmp_path_factory.mktemp("lm_eval"))
  return lm_eval_adapter.run_lm_eval(CONFIG, params(), BYTES, ["ssmjax_test_mc", "ssmjax_test_gen",
                                                               "ssmjax_test_rolling"],
                                     include_path=tasks, include_defaults=False, batch_size=2, max_length=64,
                                     log_samples=True)


def test_multiple_choice_loglikelihoods_equal_ssmjax_scoring(harness_result):
  samples = harness_result["samples"]["ssmjax_test_mc"]
  assert len(samples) == len(MC_DOCS)
  for sample in samples:
    doc = MC_DOCS[sample["doc_id"]]
    logliks = [float(resp[0][0]) for resp in sample["resps"]]
    # The requests as lm-eval built them (it joins question and choice with its target_delimiter, " ").
    assert [args[1].strip() for args in sample["arguments"]] == [c.strip() for c in doc["choices"]]
    # Longest first: the shorter choices are prefixes of it and reuse its reference forward pass.
    by_length = sorted(sample["arguments"], key=lambda args: -len(args[1]))
    reference = {tuple(args): reference_loglikelihood(*args) for args in by_length}
    expected = [reference[tuple(args)] for args in sample["arguments"]]
    np.testing.assert_allclose(logliks, expected, rtol=0, atol=1e-4)
    assert sample["acc"] == float(int(np.argmax(logliks)) == doc["answer"])
  accuracy = harness_result["results"]["ssmjax_test_mc"]["acc,none"]
  assert accuracy == np.mean([s["acc"] for s in samples])


def test_generate_until_equals_unpadded_greedy_generation(harness_result):
  samples = harness_result["samples"]["ssmjax_test_gen"]
  assert len(samples) == len(GEN_DOCS)
  for sample in samples:
    context, gen_kwargs = sample["arguments"][0]
    assert gen_kwargs["max_gen_toks"] == MAX_GEN_TOKS
    assert sample["resps"][0][0] == reference_generation(context, gen_kwargs["until"])
  assert "exact_match,none" in harness_result["results"]["ssmjax_test_gen"]


def test_loglikelihood_rolling_equals_ssmjax_perplexity(harness_result):
  (sample,) = harness_result["samples"]["ssmjax_test_rolling"]
  text = ROLLING_DOCS[0]["text"]
  expected = perplexity_of_texts(CONFIG, params(), BYTES, [text], PerplexitySettings(seq_len=64, batch_size=2))
  assert float(sample["resps"][0][0]) == pytest.approx(-expected["nll"], abs=1e-4)
  assert float(sample["resps"][0][0]) == pytest.approx(reference_logprobs([BYTES.eos_id, *BYTES.encode(text)]).sum(),
                                                       abs=1e-4)
  bits = harness_result["results"]["ssmjax_test_rolling"]["bits_per_byte,none"]
  assert bits == pytest.approx(expected["bits_per_byte"], rel=1e-5)


def test_the_model_is_registered_and_built_from_model_args(tmp_path):
  from lm_eval.api.registry import get_model

  from tiny_eval_model import save_checkpoint

  cls = get_model("ssmjax")
  assert cls is lm_eval_adapter.SSMJaxLM
  model = cls.create_from_arg_string(f"checkpoint={save_checkpoint(tmp_path)},tokenizer=byte,max_length=64",
                                     {"batch_size": "2", "device": "cuda"})
  assert (model.batch_size, model.max_length, model.eot_token_id) == (2, 64, BYTES.eos_id)
  # The entry point pyproject.toml declares for lm-eval versions with plugin discovery names this class.
  import tomllib

  with open(os.path.join(os.path.dirname(__file__), "..", "..", "pyproject.toml"), "rb") as f:
    entry = tomllib.load(f)["project"]["entry-points"]["lm_eval.models"]["ssmjax"]
  module, _, name = entry.partition(":")
  assert getattr(sys.modules[module], name) is cls


def test_bad_model_args_and_unknown_tasks_get_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist; expected an ssmjax model directory"):
    lm_eval_adapter.SSMJaxLM(checkpoint=str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="batch_size must be a positive integer; 'auto' is not supported"):
    lm_eval_adapter.SSMJaxLM(config=CONFIG, params=params(), batch_size="auto")
  with pytest.raises(ValueError, match="give model_args checkpoint=DIR"):
    lm_eval_adapter.SSMJaxLM()
  tasks = write_tasks(tmp_path)
  unknown = r"unknown task\(s\) \['no_such_task'\]: not found in the task YAMLs of include_path"
  with pytest.raises(ValueError, match=unknown):
    lm_eval_adapter.run_lm_eval(CONFIG, params(), BYTES, ["ssmjax_test_mc", "no_such_task"], include_path=tasks,
                                include_defaults=False)
  model = lm_eval_adapter.SSMJaxLM(config=CONFIG, params=params(), batch_size=2, max_length=64)
  from lm_eval.api.instance import Instance

  request = Instance(request_type="generate_until", doc={}, arguments=("x", {"until": ["!"], "num_beams": 4}), idx=0)
  with pytest.raises(ValueError, match=r"unsupported gen_kwargs \['num_beams'\]"):
    model.generate_until([request])
