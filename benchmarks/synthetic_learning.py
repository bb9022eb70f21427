"""How fast a tiny model learns the built-in synthetic tasks: a plain AdamW loop on `make_train_iterator` batches.

Prints the loss every --log_every steps, then the per-task answer accuracy on held-out examples and the phone-book
accuracy per book size, as a table and as one JSON line. This measures the data design (are the tasks learnable on a
CPU in minutes?); the real training loop is train.py.

  python benchmarks/synthetic_learning.py                     # tiny_hybrid, 300 steps, seq_len 256, batch 8
  python benchmarks/synthetic_learning.py --preset=tiny_mamba2 --tasks=phonebook --steps=500
"""

from __future__ import annotations

import dataclasses
import json
import time

from absl import app, flags

_PRESET = flags.DEFINE_string("preset", "tiny_hybrid", "Model preset (ssmjax.presets.names()).")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps.")
_TASKS = flags.DEFINE_list("tasks", ["phonebook", "mqar", "copying"], "Synthetic tasks to mix.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per row.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_LR = flags.DEFINE_float("lr", 3e-3, "Peak learning rate (linear warmup over 10% of the steps, then cosine).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Steps between loss prints.")
_BOOK_SIZES = flags.DEFINE_list("book_sizes", ["4", "8", "16"], "Phone-book sizes to evaluate.")
_TRAIN_BOOKS = flags.DEFINE_list("train_book_sizes", None, "PhonebookTask min_book_size,max_book_size (default: "
                                  "the PhonebookTask defaults).")
_NUMBER_LEN = flags.DEFINE_integer("number_len", None, "PhonebookTask.number_len (default: the PhonebookTask default).")


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import ssmjax
  from ssmjax import data

  phonebook = data.PhonebookTask()
  if _TRAIN_BOOKS.value:
    low, high = map(int, _TRAIN_BOOKS.value)
    phonebook = dataclasses.replace(phonebook, min_book_size=low, max_book_size=high)
  if _NUMBER_LEN.value:
    phonebook = dataclasses.replace(phonebook, number_len=_NUMBER_LEN.value)
  config = data.DataConfig(tasks=tuple(_TASKS.value), seq_len=_SEQ_LEN.value, global_batch_size=_BATCH.value,
                           phonebook=phonebook)
  model_config = ssmjax.presets.get(_PRESET.value)
  if model_config.vocab_size < data.data_vocab_size(config):
    raise ValueError(f"preset {_PRESET.value} has vocab {model_config.vocab_size} < {data.data_vocab_size(config)}")
  model = ssmjax.LanguageModel(model_config)
  iterator = data.make_train_iterator(config)
  first = next(iterator)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), first["inputs"])["params"])
  schedule = optax.warmup_cosine_decay_schedule(0.0, _LR.value, max(1, _STEPS.value // 10), _STEPS.value)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.1))
  opt_state = optimizer.init(params)

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(losses * batch["loss_mask"]) / jnp.maximum(jnp.sum(batch["loss_mask"]), 1.0)

  @jax.jit
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda params, inputs: model.apply({"params": params}, inputs))
  start, batch, losses = time.perf_counter(), first, []
  for step in range(1, _STEPS.value + 1):
    params, opt_state, loss = train_step(params, opt_state, batch)
    batch = next(iterator)
    if step % _LOG_EVERY.value == 0 or step == _STEPS.value:
      losses.append((step, float(loss)))
      print(f"step {step:5d}  answer loss {float(loss):.3f}  {time.perf_counter() - start:6.1f} s", flush=True)
  train_seconds = time.perf_counter() - start
  iterator.close()

  predict_fn = lambda inputs: np.asarray(predict(params, inputs))
  results = {"preset": _PRESET.value, "tasks": config.tasks, "phonebook": dataclasses.asdict(phonebook),
             "lr": _LR.value, "steps": _STEPS.value, "seq_len": _SEQ_LEN.value, "batch": _BATCH.value,
             "train_seconds": round(train_seconds, 1), "final_loss": round(losses[-1][1], 4), "task_accuracy": {},
             "phonebook_accuracy": {}}
  for task in config.tasks:
    eval_set = data.task_eval_set(config, task, num_examples=64, seed=1, pad_to_multiple=64)
    results["task_accuracy"][task] = data.answer_accuracy(predict_fn, eval_set, batch_size=16)
  for size in map(int, _BOOK_SIZES.value):
    results["phonebook_accuracy"][size] = data.phonebook_accuracy(predict_fn, num_examples=64, book_size=size, seed=1,
                                                                  task=phonebook, batch_size=16, pad_to_multiple=64)
  print(f"\n{'metric':<28}{'value':>10}")
  for task, accuracy in results["task_accuracy"].items():
    print(f"{task + ' accuracy':<28}{accuracy:>10.3f}")
  for size, accuracy in results["phonebook_accuracy"].items():
    print(f"{f'phonebook book={size}':<28}{accuracy:>10.3f}")
  print(f"{'train seconds':<28}{train_seconds:>10.1f}")
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
