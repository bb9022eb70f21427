"""ssmjax vs HuggingFace transformers: the same greedy decoding of the same converted model, side by side.

For Mamba-2 and Mamba-1, a random 130M-shape model (d_model 768, 24 layers, GPT-NeoX vocabulary) is built with
transformers, saved with ``save_pretrained`` (safetensors) and loaded into ssmjax with ``ssmjax.load_pretrained``.
Both then decode the same prompt greedily:

  HF      ``model.generate(ids, max_new_tokens=N, do_sample=False, use_cache=True)``, PyTorch on CPU, float32, no EOS
          stop. transformers uses its pure-PyTorch Mamba paths here (no mamba_ssm / causal_conv1d CUDA kernels).
  ssmjax  ``ssmjax.generate(config, params, ids, N)``: prefill plus a compiled ``lax.while_loop``, float32.

The generated tokens are compared one for one. Times are the best of ``--repeats`` runs after a warm-up run (which
compiles ssmjax's function). ``tokens/s`` counts generated tokens over the whole call (prefill included);
``decode ms/token`` subtracts a 1-token call (prefill and overheads) and divides by the other N - 1 tokens.

``floor ms/token`` is the time to read every parameter once (a compiled sum over all weights): a decode step must read
them all, so at batch 1 no implementation on this machine can decode faster than that (the step is bound by memory
bandwidth, not arithmetic). It tells how much of each side's time is overhead.

``cpu s`` / ``cpu tokens/s`` / ``cpu speed-up``: the same with the process's CPU time (all threads) in place of wall
time, which tracks the work done better than wall time on a machine shared with other jobs.

  python benchmarks/decode_vs_hf.py                       # both models, prompt 32 tokens, 64 new tokens
  python benchmarks/decode_vs_hf.py --models=mamba2 --new_tokens=128

Prints a table and one JSON line. Needs torch and transformers (the ``fixtures`` extra).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

_MODELS = flags.DEFINE_list("models", ["mamba2", "mamba"], "Which models: mamba2, mamba.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Generated tokens.")
_BATCH = flags.DEFINE_integer("batch", 1, "Sequences decoded together.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side; the fastest is reported.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random weights and prompt.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads (default: PyTorch's choice).")


def hf_model(kind: str, seed: int):
  """A random 130M-shape transformers model (state-spaces mamba-130m / mamba2-130m shapes), float32, eval mode."""
  import torch
  import transformers

  torch.manual_seed(seed)
  if kind == "mamba2":
    config = transformers.Mamba2Config(vocab_size=50288, hidden_size=768, num_hidden_layers=24, num_heads=24,
                                       head_dim=64, state_size=128, n_groups=1, expand=2, conv_kernel=4,
                                       chunk_size=256, tie_word_embeddings=True, residual_in_fp32=True)
    model = transformers.Mamba2ForCausalLM(config)
  elif kind == "mamba":
    config = transformers.MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16,
                                      expand=2, conv_kernel=4, tie_word_embeddings=True, residual_in_fp32=True)
    model = transformers.MambaForCausalLM(config)
  else:
    raise ValueError(f"unknown model {kind!r}; expected 'mamba2' or 'mamba'")
  model.generation_config.eos_token_id = None  # decode exactly N tokens, as ssmjax does with eos_id=None
  model.generation_config.pad_token_id = 0
  return model.eval()


def _best_time(fn, repeats: int) -> tuple[float, float, object]:
  """(lowest wall seconds, lowest process CPU seconds (all threads), the last result) over ``repeats`` calls."""
  best, best_cpu, result = float("inf"), float("inf"), None
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - cpu_start)
  return best, best_cpu, result


def compare(kind: str, prompt_len: int, new_tokens: int, batch: int, repeats: int, seed: int) -> dict:
  import jax
  import numpy as np
  import torch

  import ssmjax

  model = hf_model(kind, seed)
  with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    config, params = ssmjax.load_pretrained(directory)
  prompt = np.random.default_rng(seed).integers(0, 50277, (batch, prompt_len)).astype(np.int64)

  def hf_generate(n):
    with torch.no_grad():
      out = model.generate(torch.from_numpy(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           use_cache=True)
    return out[:, prompt_len:].numpy()

  def jax_generate(n):
    tokens = ssmjax.generate(config, params, prompt.astype(np.int32), n).tokens
    return np.asarray(jax.block_until_ready(tokens))

  results = {"model": kind, "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
             "torch_threads": torch.get_num_threads()}
  for side, fn in (("hf", hf_generate), ("ssmjax", jax_generate)):
    fn(new_tokens), fn(1)  # warm-up (ssmjax compiles both lengths)
    seconds, cpu_seconds, tokens = _best_time(lambda: fn(new_tokens), repeats)
    one_token, one_token_cpu, _ = _best_time(lambda: fn(1), repeats)
    results[side] = {"seconds": seconds, "tokens_per_s": batch * new_tokens / seconds,
                     "decode_ms_per_token": 1e3 * (seconds - one_token) / (new_tokens - 1),
                     "cpu_seconds": cpu_seconds, "cpu_tokens_per_s": batch * new_tokens / cpu_seconds,
                     "decode_cpu_ms_per_token": 1e3 * (cpu_seconds - one_token_cpu) / (new_tokens - 1),
                     "tokens": tokens}
  read_all = jax.jit(lambda p: sum(x.sum() for x in jax.tree_util.tree_leaves(p)))
  read_all(params).block_until_ready()
  floor, _, _ = _best_time(lambda: read_all(params).block_until_ready(), max(repeats, 5))
  results["floor_ms_per_token"] = 1e3 * floor
  hf_tokens, jax_tokens = results["hf"].pop("tokens"), results["ssmjax"].pop("tokens")
  same = hf_tokens == jax_tokens
  results["tokens_equal"] = int(same.sum())
  results["first_mismatch"] = None if same.all() else int(np.argmin(same.all(axis=0)))
  results["speedup"] = results["ssmjax"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
  results["decode_speedup"] = results["hf"]["decode_ms_per_token"] / results["ssmjax"]["decode_ms_per_token"]
  results["cpu_speedup"] = results["ssmjax"]["cpu_tokens_per_s"] / results["hf"]["cpu_tokens_per_s"]
  return results


def main(argv):
  del argv
  if _TORCH_THREADS.value is not None:
    import torch

    torch.set_num_threads(_TORCH_THREADS.value)
  rows = []
  header = (f"{'model':<8}{'side':<8}{'seconds':>9}{'tokens/s':>10}{'decode ms/token':>17}{'cpu s':>8}"
            f"{'cpu tokens/s':>14}{'tokens equal':>15}{'speed-up':>10}{'cpu speed-up':>14}{'floor ms/token':>16}")
  print(header)
  for kind in _MODELS.value:
    r = compare(kind, _PROMPT_LEN.value, _NEW_TOKENS.value, _BATCH.value, _REPEATS.value, _SEED.value)
    rows.append(r)
    total = r["batch"] * r["new_tokens"]
    for side in ("hf", "ssmjax"):
      s = r[side]
      extra = (f"{r['tokens_equal']:>9}/{total:<5}{r['speedup']:>9.2f}x{r['cpu_speedup']:>13.2f}x"
               f"{r['floor_ms_per_token']:>16.1f}" if side == "ssmjax" else "")
      print(f"{kind:<8}{side:<8}{s['seconds']:>9.2f}{s['tokens_per_s']:>10.1f}{s['decode_ms_per_token']:>17.1f}"
            f"{s['cpu_seconds']:>8.2f}{s['cpu_tokens_per_s']:>14.1f}{extra}", flush=True)
  print(json.dumps({"results": rows, "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
  app.run(main)
