"""Shared helpers for the conversion tests: fixture paths and logits compared with a reference.npz."""

import functools
import os

import jax
import numpy as np
import pytest

import ssmjax

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


@functools.lru_cache(maxsize=None)
def _apply(config):
  return jax.jit(ssmjax.LanguageModel(config).apply)


def max_logit_error(config, params, directory, key="logits"):
  """Largest |ssmjax logits - reference| over the sequence lengths of ``directory``/reference.npz."""
  reference = np.load(os.path.join(directory, "reference.npz"))
  errors = []
  for length in reference["seq_lens"]:
    expected = reference[f"{key}_T{length}"]
    logits = np.asarray(_apply(config)({"params": params}, reference[f"input_ids_T{length}"]))
    assert logits.shape == expected.shape, (logits.shape, expected.shape)
    errors.append(float(np.max(np.abs(logits - expected))))
  return max(errors)


@pytest.fixture
def logit_error():
  """``logit_error(config, params, directory, key="logits")``: see `max_logit_error`."""
  return max_logit_error
