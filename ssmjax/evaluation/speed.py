"""Decoding speed of a model as ``ssmjax.generate`` runs it: prefill of real prompts, then the compiled decode loop.

For each batch size and context length, random prompts of ``context`` tokens are prefilled into an empty cache
(`LanguageModel.prefill`, jitted: the chunked / parallel path), and from that cache ``new_tokens`` greedy tokens are
decoded by `ssmjax.generate.decode`, the loop ``ssmjax.generate`` runs. Each is compiled by a warm-up call, then timed
``repeats`` times; the fastest run is kept (the decode runs continue from the cache the previous run returned, so the
context grows by ``new_tokens`` per run, a negligible change):

  prefill_ms       the prompts through the model into a new cache, the last position's logits out
  decode_ms        one step of the whole batch: decode time / new_tokens (per-token latency)
  tokens_per_s     batch / decode_ms
  cache_mb         the decode cache (`ssmjax.cache.cache_nbytes`)
  predicted_ms     the roofline time of one step on ``device`` (`ssmjax.perf.predict_decode`), with the bytes per
                   weight / cached value of the model's dtypes: what an accelerator at its datasheet bandwidth would
                   take, for comparison with the measured figure on this machine

``benchmarks/decode.py`` measures the same decode loop on caches filled with random values (no prefill) for fixed
130M-shape models up to long contexts; this module measures a given checkpoint from real prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssmjax.cache import cache_nbytes, init_cache
from ssmjax.config import ModelConfig
from ssmjax.models.lm import LanguageModel


@dataclasses.dataclass(frozen=True)
class SpeedSettings:
  """The grid of a speed run (see the module docstring)."""

  batch_sizes: tuple[int, ...] = (1, 8)
  contexts: tuple[int, ...] = (128, 1024)  # prompt tokens
  new_tokens: int = 32  # tokens per timed decode run
  repeats: int = 3  # timed runs of each call; the fastest is kept
  device: str | None = "h100"  # an `ssmjax.perf.DEVICES` key for predicted_ms; None: no prediction
  seed: int = 0  # the random prompts

  def __post_init__(self):
    for name in ("batch_sizes", "contexts"):
      values = getattr(self, name)
      if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"SpeedSettings.{name} must be a non-empty tuple of positive ints, got {values!r}")
    if isinstance(self.new_tokens, bool) or not isinstance(self.new_tokens, int) or self.new_tokens < 1:
      raise ValueError(f"SpeedSettings.new_tokens must be a positive int, got {self.new_tokens!r}")
    if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
      raise ValueError(f"SpeedSettings.repeats must be a positive int, got {self.repeats!r}")
    if self.device is not None:
      from ssmjax.perf import DEVICES

      if self.device not in DEVICES:
        raise ValueError(f"SpeedSettings.device: unknown device {self.device!r}; known: {', '.join(DEVICES)}")


def _best_seconds(fn, args, repeats: int, carry: int | None = None) -> float:
  """Fastest of ``repeats`` timed calls after a warm-up; ``carry``: argument index replaced by output 1 (a donated
  cache handed back)."""
  args = list(args)

  def call():
    out = fn(*args)
    jax.block_until_ready(out)
    if carry is not None:
      args[carry] = out[1]

  call()  # compiles
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - start)
  return best


@functools.partial(jax.jit, static_argnames=("config",))
def _prefill(params, ids, cache, *, config: ModelConfig):
  return LanguageModel(config).apply({"params": params}, ids, cache, method=LanguageModel.prefill)


def measure_case(config: ModelConfig, params: Any, batch: int, context: int, settings: SpeedSettings) -> dict:
  """One row of the result: timings, cache size and prediction for ``batch`` prompts of ``context`` tokens."""
  from ssmjax.generate import decode
  from ssmjax.perf import predict_decode

  rng = np.random.default_rng([settings.seed, batch, context])
  prompts = jnp.asarray(rng.integers(0, config.vocab_size, (batch, context), dtype=np.int32))
  cache_len = context + settings.new_tokens * (settings.repeats + 1)  # room for every decode run
  # The empty cache is an argument: made inside the jitted function, its cursor and masks would be constants that
  # XLA spends minutes folding at long contexts.
  empty = init_cache(config, batch, cache_len)
  prefill = _best_seconds(functools.partial(_prefill, config=config), (params, prompts, empty), settings.repeats)
  logits, cache = _prefill(params, prompts, empty, config=config)
  cache_bytes = cache_nbytes(cache)

  def run(params, cache, logits):
    output, cache = decode(config, params, cache, logits, jax.random.PRNGKey(0), max_new_tokens=settings.new_tokens)
    return output.tokens, cache

  decoding = _best_seconds(jax.jit(run, donate_argnums=1), (params, cache, logits), settings.repeats, carry=1)
  step = decoding / settings.new_tokens
  row = {"batch": batch, "context": context, "prefill_ms": 1e3 * prefill, "decode_ms": 1e3 * step,
         "tokens_per_s": batch / step, "cache_mb": cache_bytes / 2**20}
  if settings.device is not None:
    weight_bytes, value_bytes = jnp.dtype(config.param_dtype).itemsize, jnp.dtype(config.dtype).itemsize
    prediction = predict_decode(config, batch, context, settings.device, weight_bytes=weight_bytes,
                                kv_bytes=value_bytes, conv_bytes=value_bytes)
    row["predicted_ms"] = 1e3 * prediction.step_seconds
  return row


def decode_speed(config: ModelConfig, params: Any, settings: SpeedSettings = SpeedSettings()) -> dict:
  """The JSON-able result: ``{"backend", "num_params", "new_tokens", "device", "results": [row, ...]}``."""
  rows = [measure_case(config, params, batch, context, settings)
          for batch in settings.batch_sizes for context in settings.contexts]
  num_params = int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
  return {"backend": jax.default_backend(), "num_params": num_params, "new_tokens": settings.new_tokens,
          "device": settings.device, "results": rows}


def format_table(result: dict) -> str:
  """The rows of a `decode_speed` result as a text table."""
  predicted = result["device"] is not None
  header = (f"{'batch':>6}{'context':>9}{'prefill ms':>12}{'decode ms':>11}{'tokens/s':>11}{'cache MB':>10}"
            + (f"{'pred. ms (' + result['device'] + ')':>20}" if predicted else ""))
  lines = [header]
  for r in result["results"]:
    lines.append(f"{r['batch']:>6}{r['context']:>9}{r['prefill_ms']:>12.2f}{r['decode_ms']:>11.3f}"
                 f"{r['tokens_per_s']:>11.1f}{r['cache_mb']:>10.2f}"
                 + (f"{r['predicted_ms']:>20.4f}" if predicted else ""))
  return "\n".join(lines)
