"""Decode speed by context length: per-token latency, tokens/s and memory of 130M-shape Mamba-2, Transformer, Hybrid.

For each model, batch and context the cache is filled to ``context`` tokens and ``--steps`` greedy tokens are decoded
by the same compiled loop `ssmjax.generate` runs (`ssmjax.generate.decode`). **Prefill is skipped**: the cache is
filled with random values of the right shapes (SSM and conv states, keys and values of ``context`` tokens, the cursor
at ``context``), since the cost of a decode step depends only on the sizes it reads, not on the values; this keeps a
32K-token context feasible on a CPU. Prefill speed is not measured here.

Timing: ``--repeats`` interleaved rounds per model and batch, each timing one run of every context in turn; each
context reports its fastest run (``ms/token`` = that run's time / ``--steps``). Interleaving keeps the context
comparison fair on a shared machine, where load comes in bursts. ``cpu ms/token``: the process's CPU time (all its
threads) per token, lowest over the runs; on a loaded machine it tracks the work done better than wall time does.

Memory: ``cache`` is the decode state (constant for Mamba-2, growing with the context for attention), ``peak`` the
compiled decode loop's own estimate (`memory_analysis`: arguments + outputs + temporaries - aliased, i.e. weights +
cache + working memory). Configurations whose cache exceeds ``--cache_budget_gb`` are skipped and listed.

  python benchmarks/decode.py                                    # all three models, batch 1 and 8, 1K..32K
  python benchmarks/decode.py --models=mamba2 --batches=1 --contexts=1024,32768 --steps=16

XLA:CPU needs ``--xla_cpu_copy_insertion_use_region_analysis=true`` to update the KV caches in place inside the decode
loop (without it every KV cache is copied on every step: 1.7x the per-token time of the 130M Transformer at 1K, 2.8x
at 4K); the script sets it unless ``--noregion_analysis``. Mamba states are updated in place either way.

Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

REGION_ANALYSIS_FLAG = "--xla_cpu_copy_insertion_use_region_analysis=true"

_MODELS = flags.DEFINE_list("models", ["mamba2", "transformer", "hybrid"], "Which 130M-shape models.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
_CONTEXTS = flags.DEFINE_list("contexts", ["1024", "2048", "4096", "8192", "16384", "32768"], "Cached tokens.")
_STEPS = flags.DEFINE_integer("steps", 8, "Tokens decoded per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per case; the fastest is reported.")
_CACHE_BUDGET_GB = flags.DEFINE_float("cache_budget_gb", 5.0, "Skip cases whose cache is larger than this.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute and parameter dtype.")
_REGION_ANALYSIS = flags.DEFINE_bool(
    "region_analysis", True, "Set XLA_FLAGS=--xla_cpu_copy_insertion_use_region_analysis=true (see ssmjax.generate: "
    "without it XLA:CPU copies every KV cache on every decode step).")


def model_configs(dtype: str) -> dict:
  """130M-shape models: d_model 768, vocab 50,288 (tied), about 125-140M parameters each."""
  from ssmjax import presets
  from ssmjax.config import AttentionConfig, MLPConfig, ModelConfig, hybrid_pattern

  common = dict(vocab_size=presets.NEOX_VOCAB_MAMBA2, d_model=768, tie_embeddings=True, dtype=dtype,
                param_dtype=dtype)
  mamba2 = presets.get("mamba2_130m").replace(dtype=dtype, param_dtype=dtype)  # 24 Mamba-2 layers (state-spaces)
  # GPT-style 12 x (attention + MLP), shaped like the paper's 8B Transformer (RoPE on half of each head, LN-1p,
  # squared ReLU) at 130M scale.
  transformer = ModelConfig(pattern="*-" * 12, norm="layernorm_1p",
                            attention=AttentionConfig(num_heads=12, head_dim=64, rotary_fraction=0.5),
                            mlp=MLPConfig(hidden_size=3072, activation="squared_relu"), **common)
  # The 8B hybrid's recipe at 24 layers: 10 Mamba-2, 2 attention (GQA 12/3, no RoPE), 12 GELU MLPs.
  hybrid = ModelConfig(pattern=hybrid_pattern(24, 0.08, 0.5), mamba2=mamba2.mamba2,
                       attention=AttentionConfig(num_heads=12, num_kv_heads=3, head_dim=64, rotary_fraction=0.0),
                       mlp=MLPConfig(hidden_size=3072, activation="gelu"), **common)
  return {"mamba2": mamba2, "transformer": transformer, "hybrid": hybrid}


def _filled_cache(config, batch: int, context: int, steps: int):
  """A cache of ``context`` tokens of random content (see the module docstring), room for ``steps`` more."""
  import jax
  import jax.numpy as jnp

  from ssmjax.cache import init_cache

  abstract = jax.eval_shape(lambda: init_cache(config, batch, context + steps))

  @jax.jit
  def fill(key):
    leaves, treedef = jax.tree_util.tree_flatten(abstract)
    keys = jax.random.split(key, len(leaves))
    values = [jax.random.normal(k, leaf.shape, leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating)
              else jnp.zeros(leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    cache = jax.tree_util.tree_unflatten(treedef, values)
    return cache.replace(cursor=cache.cursor.replace(index=jnp.int32(context)))

  return fill(jax.random.PRNGKey(0))


def _reset_cursor(cache, context: int):
  """The same cache with its cursor back at ``context`` (a timed run advanced it by ``steps``)."""
  import jax.numpy as jnp

  return cache.replace(cursor=cache.cursor.replace(index=jnp.int32(context)))


def measure_contexts(config, params, batch: int, contexts: list[int], steps: int, repeats: int,
                     hold_bytes: float) -> list[dict]:
  """Per-token time of every context for one model and batch, timed in interleaved rounds.

  Each round times one run of every context in turn, and each context reports its fastest run: on a shared machine
  a burst of load then slows one run of every context alike instead of all runs of one context. The filled caches are
  kept between rounds when they fit in ``hold_bytes`` together, and refilled before each run otherwise (untimed).
  """
  import jax
  import jax.numpy as jnp

  from ssmjax.cache import cache_nbytes, init_cache
  from ssmjax.generate import decode

  logits = jax.random.normal(jax.random.PRNGKey(1), (batch, config.vocab_size), jnp.float32)

  def run(params, cache, logits):
    output, cache = decode(config, params, cache, logits, jax.random.PRNGKey(0), max_new_tokens=steps)
    return output.tokens, cache

  compiled, rows, held = {}, {}, {}
  sizes = [cache_nbytes(jax.eval_shape(lambda c=c: init_cache(config, batch, c + steps))) for c in contexts]
  hold = sum(sizes) <= hold_bytes
  for context in contexts:
    cache = _filled_cache(config, batch, context, steps)
    compiled[context] = jax.jit(run, donate_argnums=1).lower(params, cache, logits).compile()
    memory = compiled[context].memory_analysis()
    peak = None
    if memory is not None:
      peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
              - memory.alias_size_in_bytes)
    rows[context] = {"batch": batch, "context": context, "best_s": float("inf"), "best_cpu_s": float("inf"),
                     "cache_mb": cache_nbytes(cache) / 2**20, "peak_mb": None if peak is None else peak / 2**20}
    tokens, cache = compiled[context](params, cache, logits)  # warm-up (the cache is donated and handed back)
    jax.block_until_ready(tokens)
    if hold:
      held[context] = _reset_cursor(cache, context)
    del cache
  for _ in range(repeats):
    for context in contexts:
      cache = held.pop(context) if hold else _filled_cache(config, batch, context, steps)
      jax.block_until_ready(cache)
      start, cpu_start = time.perf_counter(), time.process_time()
      tokens, cache = compiled[context](params, cache, logits)
      jax.block_until_ready(tokens)
      rows[context]["best_s"] = min(rows[context]["best_s"], time.perf_counter() - start)
      rows[context]["best_cpu_s"] = min(rows[context]["best_cpu_s"], time.process_time() - cpu_start)
      if hold:
        held[context] = _reset_cursor(cache, context)
      del cache
  results = []
  for context in contexts:
    row = rows[context]
    best, best_cpu = row.pop("best_s"), row.pop("best_cpu_s")
    results.append(row | {"ms_per_token": 1e3 * best / steps, "tokens_per_s": batch * steps / best,
                          "cpu_ms_per_token": 1e3 * best_cpu / steps})
  return results


def main(argv):
  del argv
  if _REGION_ANALYSIS.value:  # before JAX starts its backend (the imports below do not start it)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + REGION_ANALYSIS_FLAG).strip()
  import jax
  import jax.numpy as jnp
  import numpy as np

  import ssmjax
  from ssmjax.cache import cache_nbytes, init_cache

  configs = model_configs(_DTYPE.value)
  results, skipped = [], []
  print(f"{'model':<12}{'batch':>6}{'context':>8}{'ms/token':>12}{'tokens/s':>12}{'cpu ms/token':>14}{'cache MB':>12}"
        f"{'peak MB':>12}")
  for name in _MODELS.value:
    config = configs[name]
    params = jax.jit(ssmjax.LanguageModel(config).init)(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    n_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    for batch in map(int, _BATCHES.value):
      contexts = []
      for context in map(int, _CONTEXTS.value):
        size = cache_nbytes(jax.eval_shape(lambda: init_cache(config, batch, context + _STEPS.value)))
        if size > _CACHE_BUDGET_GB.value * 2**30:
          skipped.append({"model": name, "batch": batch, "context": context, "cache_gb": size / 2**30})
        else:
          contexts.append(context)
      for row in measure_contexts(config, params, batch, contexts, _STEPS.value, _REPEATS.value,
                                  _CACHE_BUDGET_GB.value * 2**30):
        row = {"model": name, "params_m": n_params / 1e6} | row
        results.append(row)
        print(f"{name:<12}{batch:>6}{row['context']:>8}{row['ms_per_token']:>12.2f}{row['tokens_per_s']:>12.1f}"
              f"{row['cpu_ms_per_token']:>14.2f}{row['cache_mb']:>12.1f}{row['peak_mb'] or float('nan'):>12.1f}",
              flush=True)

  summary = {}  # per model and batch: the largest measured context's per-token time over the smallest's
  for name in _MODELS.value:
    for b in map(int, _BATCHES.value):
      rows = sorted((r for r in results if r["model"] == name and r["batch"] == b), key=lambda r: r["context"])
      if len(rows) > 1:
        low, high = rows[0], rows[-1]
        for key, label in (("ms_per_token", "time"), ("cpu_ms_per_token", "cpu_time")):
          summary[f"{name}_b{b}_{label}_{high['context']}_over_{low['context']}"] = high[key] / low[key]
  for s in skipped:
    print(f"skipped: {s['model']} batch {s['batch']} context {s['context']}: cache {s['cache_gb']:.1f} GB > budget")
  for key, value in summary.items():
    if value is not None:
      print(f"{key}: {value:.2f}x")
  print(json.dumps({"backend": jax.default_backend(), "steps": _STEPS.value, "repeats": _REPEATS.value,
                    "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": results, "skipped": skipped,
                    "summary": summary}))


if __name__ == "__main__":
  app.run(main)
