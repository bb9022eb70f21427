"""Optimizer: optax schedules against Megatron's formulas, the weight-decay mask, and what the update does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax import presets
from ssmjax.train import optim
from ssmjax.train.state import init_params

TOTAL = 200


@pytest.mark.parametrize("config", [
    optim.OptimizerConfig(schedule="cosine", warmup_steps=20, learning_rate=1e-3, min_learning_rate=1e-4),
    optim.OptimizerConfig(schedule="cosine", warmup_steps=10, decay_steps=150, learning_rate=3e-4),
    optim.OptimizerConfig(schedule="cosine", warmup_steps=0, learning_rate=1e-3, min_learning_rate=0.0),
    optim.OptimizerConfig(schedule="wsd", warmup_steps=20, wsd_decay_steps=50, wsd_decay_style="linear"),
    optim.OptimizerConfig(schedule="wsd", warmup_steps=20, wsd_decay_steps=50, wsd_decay_style="cosine"),
    optim.OptimizerConfig(schedule="wsd", warmup_steps=5, decay_steps=180, wsd_decay_steps=60,
                          wsd_decay_style="exponential"),
    optim.OptimizerConfig(schedule="constant", warmup_steps=30),
], ids=["cosine", "cosine-decay-steps", "cosine-no-warmup", "wsd-linear", "wsd-cosine", "wsd-exponential",
        "constant"])
def test_schedule_matches_megatron_formula(config):
  schedule = optim.learning_rate_schedule(config, TOTAL)
  steps = np.arange(TOTAL + 20)
  got = np.asarray(jax.vmap(schedule)(jnp.asarray(steps)))
  want = np.asarray([optim.megatron_lr_reference(config, int(s), TOTAL) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_cosine_schedule_shape():
  config = optim.OptimizerConfig(warmup_steps=10, learning_rate=1.0, min_learning_rate=0.1)
  schedule = optim.learning_rate_schedule(config, 110)
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.55)  # half-way through the cosine: the mean of peak and minimum.
  assert float(schedule(110)) == pytest.approx(0.1) and float(schedule(500)) == pytest.approx(0.1)


@pytest.mark.parametrize("bad, match", [
    (dict(schedule="linear"), "schedule"),
    (dict(wsd_decay_style="square"), "wsd_decay_style"),
    (dict(warmup_steps=-1), "warmup_steps"),
])
def test_bad_optimizer_config(bad, match):
  with pytest.raises(ValueError, match=match):
    optim.OptimizerConfig(**bad)


def test_wsd_needs_a_decay_phase():
  with pytest.raises(ValueError, match="wsd_decay_steps"):
    optim.learning_rate_schedule(optim.OptimizerConfig(schedule="wsd", wsd_decay_steps=0), TOTAL)


def _flat(tree):
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("preset", ["tiny_hybrid", "tiny_mamba", "tiny_transformer"])
def test_decay_mask_excludes_biases_norms_A_log_D(preset):
  params = jax.eval_shape(lambda: init_params(presets.get(preset), jax.random.PRNGKey(0)))
  mask = _flat(optim.decay_mask(params))
  shapes = {k: v.shape for k, v in _flat(params).items()}
  for path, decays in mask.items():
    leaf = path.split("'")[-2]
    no_decay = leaf.endswith("bias") or leaf in ("A_log", "D", "scale") or len(shapes[path]) <= 1
    assert decays == (not no_decay), path
  decayed = {p.split("'")[-2] for p, d in mask.items() if d}
  kept = {p.split("'")[-2] for p, d in mask.items() if not d}
  if preset == "tiny_mamba":  # Mamba-1: A_log is 2-D (E, N) and still excluded, as mamba_ssm excludes it.
    assert len(shapes["['layers_0']['mixer']['A_log']"]) == 2 and "A_log" in kept
    assert {"in_proj", "x_proj", "dt_proj", "out_proj", "kernel", "embedding"} <= decayed
    assert {"dt_proj_bias", "D", "bias", "scale"} <= kept
  if preset == "tiny_hybrid":  # Mamba-2: the group-major conv bias is 2-D (G, channels) and still excluded.
    assert len(shapes["['layers_0']['mixer']['conv1d']['bias']"]) == 2 and "bias" in kept
    assert {"in_proj", "out_proj", "kernel", "q_proj", "o_proj", "fc1", "fc2", "lm_head", "embedding"} <= decayed
    assert {"dt_bias", "A_log", "D", "scale"} <= kept


def test_update_decays_only_masked_params_and_clips():
  # Given zero gradients, only weight decay moves the parameters: p <- p - lr * wd * p where the mask says so.
  params = {"layer": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,)), "A_log": jnp.ones((2, 3))}}
  config = optim.OptimizerConfig(learning_rate=0.1, schedule="constant", weight_decay=0.5)
  tx, _ = optim.make_optimizer(config, 10)
  state = tx.init(params)
  updates, state = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
  np.testing.assert_allclose(updates["layer"]["kernel"], -0.1 * 0.5 * np.ones((2, 3)), rtol=1e-6)
  np.testing.assert_allclose(updates["layer"]["bias"], 0.0)
  np.testing.assert_allclose(updates["layer"]["A_log"], 0.0)
  # A huge gradient is clipped to global norm 1 before Adam. With eps = 1 Adam's first step is
  # lr * g / (|g| + eps), which shows the clipped g = 1 / sqrt(15) per element (15 elements) instead of 1e6.
  config = optim.OptimizerConfig(learning_rate=0.1, schedule="constant", weight_decay=0.0, eps=1.0)
  tx, _ = optim.make_optimizer(config, 10)
  big = jax.tree_util.tree_map(lambda p: 1e6 * jnp.ones_like(p), params)
  updates, _ = tx.update(big, tx.init(params), params)
  clipped = 1 / np.sqrt(15)
  np.testing.assert_allclose(updates["layer"]["bias"], -0.1 * clipped / (clipped + 1.0), rtol=1e-4)
