"""The paper's evaluations as library functions; ``eval.py`` is their command line.

  perplexity_of_files(config, params, tokenizer, paths)  perplexity, bits per byte of text / JSONL / ArrayRecord docs
  perplexity_of_texts(config, params, tokenizer, texts)  the same for documents in memory
  TokenScorer(config, params).score(requests)            batched per-token log-probabilities (perplexity, lm-eval)
  decode_speed(config, params, SpeedSettings())          prefill / decode timings of ssmjax.generate, and a roofline
  load_checkpoint(path)                                  (config, params) from an ssmjax or HuggingFace directory

The lm-evaluation-harness model (``ssmjax.evaluation.lm_eval_adapter``: `SSMJaxLM`, `run_lm_eval`) needs the optional
``lm_eval`` package (``pip install -e .[eval]``) and is not imported here; import that module to register the model.
"""

from ssmjax.evaluation.loading import check_tokenizer_fits, load_checkpoint
from ssmjax.evaluation.perplexity import (PerplexitySettings, document_windows, perplexity_of_files,
                                          perplexity_of_texts)
from ssmjax.evaluation.scoring import ScoreRequest, TokenScorer, TokenScores
from ssmjax.evaluation.speed import SpeedSettings, decode_speed

__all__ = [
    "PerplexitySettings",
    "ScoreRequest",
    "SpeedSettings",
    "TokenScorer",
    "TokenScores",
    "check_tokenizer_fits",
    "decode_speed",
    "document_windows",
    "load_checkpoint",
    "perplexity_of_files",
    "perplexity_of_texts",
]
