"""LanguageModel: presets build abstractly, parameter counts (SPEC §1.6), tiny models train, layouts round-trip."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssmjax
from ssmjax import presets
from ssmjax.models.__main__ import main as models_main
from ssmjax.models.counting import abstract_params, param_breakdown
from ssmjax.mixers.mamba2 import from_group_major, to_group_major

TINY = [name for name in presets.names() if name.startswith("tiny_")]


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_builds_abstractly(name):
  config = presets.get(name)
  params = abstract_params(config)
  assert {"embed", "final_norm", f"layers_{config.num_layers - 1}"} <= set(params)
  assert ("lm_head" in params) == (not config.tie_embeddings)
  assert ssmjax.count_params(config) > 0


@pytest.mark.parametrize("name, expected", [
    ("mamba2_8b", 8_236_999_680),
    ("mamba2_hybrid_8b", 8_654_517_248),
    ("transformer_8b", 8_540_135_424),
    ("mamba_8b", 7_994_642_432),
])
def test_count_params_matches_spec(name, expected):
  assert ssmjax.count_params(presets.get(name)) == expected


def test_breakdown_explains_the_transformer_count():
  b = param_breakdown(presets.get("transformer_8b"))
  d, ffn, vocab = 4096, 16384, 256_000
  layernorm = 2 * d  # layernorm-1p has a gain and a bias
  attention, mlp = b["layers"]["*"], b["layers"]["-"]
  assert attention["count"] == mlp["count"] == 32
  assert attention["per_layer"] == 4 * d * d + layernorm  # MHA: q, k, v, o are d x d each; no biases
  assert mlp["per_layer"] == 2 * d * ffn + layernorm
  assert b["embedding"] == b["output_layer"] == vocab * d
  assert b["total"] == 2 * vocab * d + 32 * (attention["per_layer"] + mlp["per_layer"]) + layernorm


def test_breakdown_of_the_hybrid_matches_spec_per_layer_counts():
  layers = param_breakdown(presets.get("mamba2_hybrid_8b"))["layers"]
  assert (layers["M"]["count"], layers["M"]["per_layer"]) == (24, 109_640_064)
  assert (layers["*"]["count"], layers["*"]["per_layer"]) == (4, 41_947_136)
  assert (layers["-"]["count"], layers["-"]["per_layer"]) == (28, 134_221_824)
  assert layers["M"]["components"]["in_proj"] == 76_021_760


def test_python_m_models_prints_count_and_breakdown(capsys):
  assert models_main(["ssmjax.models", "mamba2_8b"]) == 0
  out = capsys.readouterr().out
  assert "8,236,999,680" in out and "56 x Mamba-2 layer (109,640,064 each)" in out


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match="unknown preset 'nope'.*mamba2_8b"):
    presets.get("nope")


def _loss_and_grads(config, ids):
  model = ssmjax.LanguageModel(config)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), ids)["params"]

  def loss_fn(p):
    logits = model.apply({"params": p}, ids)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean(), logits

  (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  return loss, logits, grads


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_run_forward_and_backward(name):
  config = presets.get(name)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 21), 0, config.vocab_size)  # 21: not a chunk multiple
  loss, logits, grads = _loss_and_grads(config, ids)
  assert logits.shape == (2, 21, config.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(float(loss)) and abs(float(loss) - np.log(config.vocab_size)) < 1.0  # near-uniform at init
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    assert np.any(g != 0), f"parameter {jax.tree_util.keystr(path)} does not affect the loss"


@pytest.mark.parametrize("name, field, fast, slow", [
    ("tiny_mamba2", "mamba2", "chunked", "reference"),
    ("tiny_mamba", "mamba1", "associative", "reference"),
])
def test_model_with_reference_scan_gives_the_same_logits(name, field, fast, slow):
  config = presets.get(name)
  ids = jax.random.randint(jax.random.PRNGKey(2), (2, 19), 0, config.vocab_size)
  with_impl = lambda impl: config.replace(**{field: dataclasses.replace(getattr(config, field), implementation=impl)})
  params = jax.jit(ssmjax.LanguageModel(with_impl(fast)).init)(jax.random.PRNGKey(0), ids)["params"]
  fast_logits = jax.jit(ssmjax.LanguageModel(with_impl(fast)).apply)({"params": params}, ids)
  slow_logits = jax.jit(ssmjax.LanguageModel(with_impl(slow)).apply)({"params": params}, ids)
  np.testing.assert_allclose(np.asarray(fast_logits), np.asarray(slow_logits), atol=1e-5, rtol=1e-5)


def test_model_rejects_input_ids_of_wrong_rank():
  model = ssmjax.LanguageModel(presets.get("tiny_llama"))
  with pytest.raises(ValueError, match="input_ids"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((5,), jnp.int32))


def test_group_major_layout_round_trips_and_groups_segments():
  dims = dict(d_inner=8, ngroups=2, d_state=3, nheads=4)  # per group: z 4, x 4, B 3, C 3, dt 2
  flat = np.arange(2 * 8 + 2 * 2 * 3 + 4)
  grouped = to_group_major(flat, "in_proj", **dims)
  assert grouped.shape == (2, 16)
  # Group 1 holds the second halves of z and x, the second B and C groups and dt of heads 2, 3.
  z, x, B, C, dt = np.split(flat, [8, 16, 22, 28])
  np.testing.assert_array_equal(grouped[1], np.concatenate([z[4:], x[4:], B[3:], C[3:], dt[2:]]))
  np.testing.assert_array_equal(from_group_major(grouped, "in_proj", **dims), flat)
  conv = np.arange(2 * (8 + 2 * 2 * 3)).reshape(2, 20)
  np.testing.assert_array_equal(from_group_major(to_group_major(conv, "conv", **dims), "conv", **dims), conv)
  with pytest.raises(ValueError, match="expected 32"):
    to_group_major(flat[:-1], "in_proj", **dims)


@pytest.mark.parametrize("policy", ["full", pytest.param("dots", marks=pytest.mark.slow)])
def test_remat_keeps_loss_and_gradients(policy):
  config = presets.get("tiny_hybrid").replace(pattern="M*-")  # one sub-block of each kind keeps compiles short
  ids = jax.random.randint(jax.random.PRNGKey(3), (2, 9), 0, config.vocab_size)
  loss, _, grads = _loss_and_grads(config, ids)
  remat_loss, _, remat_grads = _loss_and_grads(config.replace(remat_policy=policy), ids)
  np.testing.assert_allclose(float(remat_loss), float(loss), rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(remat_grads), jax.tree_util.tree_leaves(grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
