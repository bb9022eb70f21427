"""Decode speed by context length: per-token latency, tokens/s and memory of 130M-shape Mamba-2, Transformer, Hybrid.

For each model, batch and context the cache is filled to ``context`` tokens and ``--steps`` greedy tokens are decoded
by the same compiled loop `ssmjax.generate` runs (`ssmjax.generate.decode`). **Prefill is skipped**: the cache is
filled with random values of the right shapes (SSM and conv states, keys and values of ``context`` tokens, the cursor
at ``context``), since the cost of a decode step depends only on the sizes it reads, not on the values; this keeps a
32K-token context feasible on a CPU. Prefill speed is not measured here.

Memory: ``cache`` is the decode state (constant for Mamba-2, growing with the context for attention), ``peak`` the
compiled decode loop's own estimate (`memory_analysis`: arguments + outputs + temporaries - aliased, i.e. weights +
cache + working memory). Configurations whose cache exceeds ``--cache_budget_gb`` are skipped and listed.

  python benchmarks/decode.py                                    # all three models, batch 1 and 8, 1K..32K
  python benchmarks/decode.py --models=mamba2 --batches=1 --contexts=1024,32768 --steps=16

Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

_MODELS = flags.DEFINE_list("models", ["mamba2", "transformer", "hybrid"], "Which 130M-shape models.")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
_CONTEXTS = flags.DEFINE_list("contexts", ["1024", "2048", "4096", "8192", "16384", "32768"], "Cached tokens.")
_STEPS = flags.DEFINE_integer("steps", 8, "Tokens decoded per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per case; the fastest is reported.")
_CACHE_BUDGET_GB = flags.DEFINE_float("cache_budget_gb", 5.0, "Skip cases whose cache is larger than this.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute and parameter dtype.")


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


def measure(config, params, batch: int, context: int, steps: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp

  from ssmjax.cache import cache_nbytes
  from ssmjax.generate import decode

  cache = _filled_cache(config, batch, context, steps)
  logits = jax.random.normal(jax.random.PRNGKey(1), (batch, config.vocab_size), jnp.float32)

  def run(params, cache, logits):
    output, cache = decode(config, params, cache, logits, jax.random.PRNGKey(0), max_new_tokens=steps)
    return output.tokens, cache

  compiled = jax.jit(run, donate_argnums=1).lower(params, cache, logits).compile()
  memory = compiled.memory_analysis()
  peak = None
  if memory is not None:
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes)
  cache_bytes = cache_nbytes(cache)
  tokens, cache = compiled(params, cache, logits)  # warm-up (the cache is donated and handed back)
  jax.block_until_ready(tokens)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    tokens, cache = compiled(params, cache, logits)
    jax.block_until_ready(tokens)
    best = min(best, time.perf_counter() - start)
  return {"batch": batch, "context": context, "ms_per_token": 1e3 * best / steps,
          "tokens_per_s": batch * steps / best, "cache_mb": cache_bytes / 2**20,
          "peak_mb": None if peak is None else peak / 2**20}


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  import ssmjax
  from ssmjax.cache import cache_nbytes, init_cache

  configs = model_configs(_DTYPE.value)
  results, skipped = [], []
  print(f"{'model':<12}{'batch':>6}{'context':>8}{'ms/token':>12}{'tokens/s':>12}{'cache MB':>12}{'peak MB':>12}")
  for name in _MODELS.value:
    config = configs[name]
    params = jax.jit(ssmjax.LanguageModel(config).init)(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    n_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    for batch in map(int, _BATCHES.value):
      for context in map(int, _CONTEXTS.value):
        size = cache_nbytes(jax.eval_shape(lambda: init_cache(config, batch, context + _STEPS.value)))
        if size > _CACHE_BUDGET_GB.value * 2**30:
          skipped.append({"model": name, "batch": batch, "context": context, "cache_gb": size / 2**30})
          continue
        row = {"model": name, "params_m": n_params / 1e6} | measure(config, params, batch, context, _STEPS.value,
                                                                   _REPEATS.value)
        results.append(row)
        print(f"{name:<12}{batch:>6}{context:>8}{row['ms_per_token']:>12.2f}{row['tokens_per_s']:>12.1f}"
              f"{row['cache_mb']:>12.1f}{row['peak_mb'] or float('nan'):>12.1f}", flush=True)

  def ratio(name, batch, high, low):
    by = {(r["model"], r["batch"], r["context"]): r["ms_per_token"] for r in results}
    if (name, batch, high) in by and (name, batch, low) in by:
      return by[(name, batch, high)] / by[(name, batch, low)]
    return None

  contexts = sorted(map(int, _CONTEXTS.value))
  summary = {f"{name}_b{b}_time_{contexts[-1]}_over_{contexts[0]}": ratio(name, int(b), contexts[-1], contexts[0])
             for name in _MODELS.value for b in _BATCHES.value}
  for s in skipped:
    print(f"skipped: {s['model']} batch {s['batch']} context {s['context']}: cache {s['cache_gb']:.1f} GB > budget")
  for key, value in summary.items():
    if value is not None:
      print(f"{key}: {value:.2f}x")
  print(json.dumps({"backend": jax.default_backend(), "steps": _STEPS.value, "results": results, "skipped": skipped,
                    "summary": summary}))


if __name__ == "__main__":
  app.run(main)
