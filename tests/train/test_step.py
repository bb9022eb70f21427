"""The train step: the masked loss against a NumPy reference, and gradient accumulation against one big batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.config import AttentionConfig, Mamba2Config, MLPConfig, ModelConfig
from ssmjax.models import LanguageModel
from ssmjax.train import optim, step
from ssmjax.train.state import TrainState, init_params

CONFIG = ModelConfig(vocab_size=64, d_model=32, pattern="M*-",
                     mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=2, chunk_size=8),
                     attention=AttentionConfig(num_heads=2), mlp=MLPConfig(hidden_size=64))
B, T = 8, 12


_init = jax.jit(init_params, static_argnums=0)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 64, (B, T + 1)).astype(np.int32)
  mask = (rng.random((B, T)) < 0.6).astype(np.float32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


def _state(optimizer):
  params = _init(CONFIG, jax.random.PRNGKey(0))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.PRNGKey(1))


def test_loss_is_the_masked_mean_cross_entropy():
  batch = _batch()
  params = _init(CONFIG, jax.random.PRNGKey(0))
  loss_sum, aux = jax.jit(lambda p, b: step.loss_sums(p, LanguageModel(CONFIG), b))(params, batch)
  logits = np.asarray(jax.jit(LanguageModel(CONFIG).apply)({"params": params}, batch["inputs"]), np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
      -1, keepdims=True)
  nll = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss_sum), (nll * batch["loss_mask"]).sum(), rtol=1e-5)
  assert float(aux["weight"]) == batch["loss_mask"].sum()
  hits = (logits.argmax(-1) == batch["targets"]) * batch["loss_mask"]
  assert float(aux["correct"]) == hits.sum()


@pytest.mark.slow
def test_masked_positions_do_not_change_the_gradient():
  batch = _batch()
  changed = dict(batch, targets=np.where(batch["loss_mask"] > 0, batch["targets"], (batch["targets"] + 7) % 64))
  params = _init(CONFIG, jax.random.PRNGKey(0))
  grad = jax.jit(jax.grad(lambda p, b: step.loss_sums(p, LanguageModel(CONFIG), b)[0]))
  for a, b in zip(jax.tree_util.tree_leaves(grad(params, batch)), jax.tree_util.tree_leaves(grad(params, changed))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("accum_steps", [4])
def test_accumulation_matches_one_batch(accum_steps):
  optimizer, schedule = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=1), 10)
  model = LanguageModel(CONFIG)
  one = jax.jit(step.make_train_step(model, optimizer, schedule, 1))
  accumulated = jax.jit(step.make_train_step(model, optimizer, schedule, accum_steps))
  state_a, state_b = _state(optimizer), _state(optimizer)
  for seed in range(2):
    state_a, metrics_a = one(state_a, _batch(seed))
    state_b, metrics_b = accumulated(state_b, _batch(seed))
    for key in ("loss", "grad_norm", "tokens", "accuracy"):
      np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=2e-5, err_msg=key)
  for a, b in zip(jax.tree_util.tree_leaves(state_a.params), jax.tree_util.tree_leaves(state_b.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(state_b.step) == 2


def test_split_microbatches_keeps_rows_together():
  batch = {k: np.arange(B * T).reshape(B, T) for k in step.BATCH_KEYS}
  micro = step.split_microbatches(batch, 4)["inputs"]
  assert micro.shape == (4, B // 4, T)
  np.testing.assert_array_equal(micro[1, 0], batch["inputs"][1])  # row i * A + a -> micro-batch a, row i
  np.testing.assert_array_equal(micro[1, 1], batch["inputs"][5])
  with pytest.raises(ValueError, match="accum_steps=3"):
    step.split_microbatches(batch, 3)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_master_weights():
  config = CONFIG.replace(dtype="bfloat16")
  optimizer, schedule = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2), 10)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=_init(config, jax.random.PRNGKey(0)),
                     opt_state=None, rng=jax.random.PRNGKey(1))
  state = state.replace(opt_state=optimizer.init(state.params))
  new_state, metrics = jax.jit(step.make_train_step(LanguageModel(config), optimizer, schedule))(state, _batch())
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
