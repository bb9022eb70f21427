"""Loading a model to evaluate: an ssmjax model directory or a HuggingFace transformers directory."""

from __future__ import annotations

import os
from typing import Any

from ssmjax.config import ModelConfig


def load_checkpoint(path: str) -> tuple[ModelConfig, Any]:
  """(ModelConfig, params) from ``path``.

  ``path`` is an ssmjax model directory (``model_config.json`` + ``params/``, written by
  `ssmjax.checkpoint.save_model`, ``train.py`` or ``python -m ssmjax.convert``) or a HuggingFace transformers directory
  (``config.json`` + safetensors, read by `ssmjax.load_pretrained`).

  Raises:
    FileNotFoundError: ``path`` is neither (the message names it and what was looked for).
  """
  from ssmjax import checkpoint, convert  # Imported here: callers that only parse flags stay fast.

  if not isinstance(path, str) or not path:
    raise FileNotFoundError(f"checkpoint: expected a model directory path, got {path!r}")
  path = os.path.expanduser(path)
  if os.path.exists(os.path.join(path, checkpoint.CONFIG_FILE)):
    return checkpoint.load_model(path)
  if os.path.exists(os.path.join(path, "config.json")):
    return convert.load_pretrained(path)
  kinds = (f"an ssmjax model directory ({checkpoint.CONFIG_FILE} + {checkpoint.PARAMS_DIR}/)",
           "a HuggingFace directory (config.json)")
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist; expected {kinds[0]} or {kinds[1]}")
  raise FileNotFoundError(f"checkpoint {path!r} is neither {kinds[0]} nor {kinds[1]}")


def check_tokenizer_fits(tokenizer: Any, config: ModelConfig) -> None:
  """Raises ValueError when ``tokenizer`` makes ids the model has no embedding for."""
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"the tokenizer's vocabulary ({tokenizer.vocab_size}) is larger than the model's "
                     f"({config.vocab_size}): the tokenizer does not belong to the checkpoint")
