"""Entry point of the main job.

Until the training loop lands (issue: Training), this builds a preset model, prints its parameter report and runs one
jitted forward and backward pass on random tokens, reporting the loss:

  python train.py                         # tiny Mamba-2-Hybrid on the CPU
  python train.py --preset=mamba2_130m --seqlen=256
"""

from __future__ import annotations

import time

from absl import app, flags

_PRESET = flags.DEFINE_string("preset", "tiny_hybrid", "Model preset (see ssmjax.presets.names()).")
_SEQLEN = flags.DEFINE_integer("seqlen", 128, "Sequence length of the random batch.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size of the random batch.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  import optax

  import ssmjax
  from ssmjax.models.counting import format_breakdown

  config = ssmjax.presets.get(_PRESET.value)
  print(format_breakdown(_PRESET.value, config))
  model = ssmjax.LanguageModel(config)
  ids = jax.random.randint(jax.random.PRNGKey(0), (_BATCH.value, _SEQLEN.value), 0, config.vocab_size)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), ids)["params"]

  @jax.jit
  def loss_and_grads(params):
    def loss_fn(p):
      logits = model.apply({"params": p}, ids)
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()
    return jax.value_and_grad(loss_fn)(params)

  start = time.perf_counter()
  loss, grads = jax.block_until_ready(loss_and_grads(params))
  print(f"forward+backward on {_BATCH.value}x{_SEQLEN.value} random tokens: loss {float(loss):.4f} "
        f"(uniform would be {float(jax.numpy.log(config.vocab_size)):.4f}), grad norm "
        f"{float(optax.global_norm(grads)):.4f}, {time.perf_counter() - start:.1f}s including compilation "
        f"on {jax.devices()[0].platform}")


if __name__ == "__main__":
  app.run(main)
