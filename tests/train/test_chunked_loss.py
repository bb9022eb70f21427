"""Chunked cross-entropy (`ssmjax.models.loss`) against the whole-logits loss: values, gradients, the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.config import AttentionConfig, Mamba2Config, MLPConfig, ModelConfig
from ssmjax.models import LanguageModel
from ssmjax.models import loss as loss_lib
from ssmjax.train import optim, step
from ssmjax.train.state import TrainState, init_params

CONFIG = ModelConfig(vocab_size=67, d_model=32, pattern="M*-",
                     mamba2=Mamba2Config(d_state=8, headdim=8, ngroups=2, chunk_size=8),
                     attention=AttentionConfig(num_heads=2), mlp=MLPConfig(hidden_size=64))
B, T = 4, 13  # a length no chunk size below divides evenly but 13 and 1.

_init = jax.jit(init_params, static_argnums=0)


def _batch(seed=0, vocab=67):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (B, T + 1)).astype(np.int32)
  mask = (rng.random((B, T)) < 0.7).astype(np.float32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


def _loss_and_grads(config, params, batch, chunk):
  def f(p):
    loss, aux = step.loss_sums(p, LanguageModel(config), batch, loss_chunk_size=chunk)
    return loss, aux
  return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


def _assert_grads_close(actual, desired, rtol):
  """Leaf by leaf, relative to each leaf's largest entry (entries near zero are sums that cancel)."""
  flat_desired = dict((jax.tree_util.keystr(p), g) for p, g in jax.tree_util.tree_flatten_with_path(desired)[0])
  flat_actual = dict((jax.tree_util.keystr(p), g) for p, g in jax.tree_util.tree_flatten_with_path(actual)[0])
  assert flat_actual.keys() == flat_desired.keys()
  for name, g0 in flat_desired.items():
    g0 = np.asarray(g0, np.float32)
    np.testing.assert_allclose(np.asarray(flat_actual[name], np.float32), g0, rtol=rtol,
                               atol=rtol * float(np.abs(g0).max()), err_msg=name)


@pytest.fixture(scope="module")
def reference():
  params = _init(CONFIG, jax.random.PRNGKey(0))
  return params, _loss_and_grads(CONFIG, params, _batch(), 0)


# 1: a chunk per position; 5: chunks that do not divide T (padded); 64: one chunk longer than T.
@pytest.mark.parametrize("chunk", [pytest.param(1, marks=pytest.mark.slow), 5,
                                   pytest.param(64, marks=pytest.mark.slow)])
def test_values_and_gradients_equal_the_whole_logits_loss(chunk, reference):
  # Given a hybrid model and a masked batch, when the loss is computed over chunks of positions,
  # then the loss, hit count and every parameter gradient equal the unchunked ones up to float32 summation order.
  params, ((loss0, aux0), grads0) = reference
  (loss1, aux1), grads1 = _loss_and_grads(CONFIG, params, _batch(), chunk)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  assert float(aux1["correct"]) == float(aux0["correct"]) and float(aux1["weight"]) == float(aux0["weight"])
  _assert_grads_close(grads1, grads0, rtol=2e-5)


def test_vocab_major_weight_in_bfloat16_equals_whole_logits():
  # The function alone, as a tied model calls it: a (V, D) weight, bfloat16 compute (the whole-logits reference
  # rounds its logits to bfloat16 before the float32 loss exactly as each chunk does).
  rng = np.random.default_rng(4)
  hidden = jnp.asarray(rng.normal(size=(3, 10, 16)), jnp.bfloat16)
  weight = rng.normal(size=(40, 16)).astype(np.float32)
  targets = rng.integers(0, 40, (3, 10)).astype(np.int32)
  mask = (rng.random((3, 10)) < 0.7).astype(np.float32)

  def chunked(h, w):
    return loss_lib.chunked_cross_entropy_sums(h, w, targets, mask, chunk_size=3, vocab_major=True)

  def whole(h, w):
    logits = jnp.einsum("btd,vd->btv", h, w.astype(h.dtype)).astype(jnp.float32)
    return loss_lib.cross_entropy_sums(logits, targets, mask)

  (loss1, hits1), grads1 = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(hidden, weight)
  (loss0, hits0), grads0 = jax.jit(jax.value_and_grad(whole, argnums=(0, 1), has_aux=True))(hidden, weight)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  assert float(hits1) == float(hits0)
  # bfloat16 products: the same up to bfloat16 rounding of the weight cotangent's chunk sums.
  _assert_grads_close(grads1, grads0, rtol=2e-2)


@pytest.mark.slow
def test_tied_embeddings_and_bfloat16():
  # Tied output layer (vocab-major weight) in bfloat16 compute: the same numbers as the whole-logits path, whose
  # logits are rounded to bfloat16 before the float32 loss exactly as each chunk's are.
  config = CONFIG.replace(tie_embeddings=True, dtype="bfloat16")
  params = _init(config, jax.random.PRNGKey(1))
  batch = _batch(1)
  (loss0, aux0), grads0 = _loss_and_grads(config, params, batch, 0)
  (loss1, aux1), grads1 = _loss_and_grads(config, params, batch, 4)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  assert float(aux1["correct"]) == float(aux0["correct"])
  # bfloat16 products: the whole-logits path rounds the output layer's weight cotangent once per product, the
  # chunked one sums the chunks' products in float32 first; elsewhere the same bfloat16 operations.
  _assert_grads_close(grads1, grads0, rtol=2e-2)


def test_loss_sums_match_a_numpy_reference():
  # The chunked function on its own against float64 NumPy: log-softmax cross-entropy and argmax hits.
  rng = np.random.default_rng(3)
  hidden = rng.normal(size=(2, 7, 5)).astype(np.float32)
  weight = rng.normal(size=(5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (2, 7)).astype(np.int32)
  mask = (rng.random((2, 7)) < 0.5).astype(np.float32)
  loss, hits = jax.jit(lambda *a: loss_lib.chunked_cross_entropy_sums(*a, chunk_size=3))(hidden, weight, targets,
                                                                                         mask)
  logits = hidden.astype(np.float64) @ weight
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss), (nll * mask).sum(), rtol=1e-5)
  assert float(hits) == ((logits.argmax(-1) == targets) * mask).sum()


def test_train_step_with_chunked_loss_matches_unchunked():
  optimizer, schedule = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=1), 10)
  model = LanguageModel(CONFIG)
  params = _init(CONFIG, jax.random.PRNGKey(0))
  states, metrics = [], []
  for chunk in (0, 4):
    train_step = jax.jit(step.make_train_step(model, optimizer, schedule, accum_steps=2, loss_chunk_size=chunk))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       rng=jax.random.PRNGKey(1))
    state, m = train_step(state, _batch(5))
    states.append(state)
    metrics.append(m)
  for key in ("loss", "grad_norm", "accuracy"):
    np.testing.assert_allclose(metrics[1][key], metrics[0][key], rtol=2e-5, err_msg=key)
  for a, b in zip(jax.tree_util.tree_leaves(states[0].params), jax.tree_util.tree_leaves(states[1].params)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_bad_arguments_are_clear_errors():
  hidden, weight = jnp.zeros((2, 4, 8)), jnp.zeros((8, 16))
  targets, mask = jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4))
  with pytest.raises(ValueError, match="chunk_size must be a positive int"):
    loss_lib.chunked_cross_entropy_sums(hidden, weight, targets, mask, chunk_size=0)
  with pytest.raises(ValueError, match=r"weight must be \(d_model, vocab\) with d_model 8"):
    loss_lib.chunked_cross_entropy_sums(hidden, weight.T, targets, mask, chunk_size=2)
  with pytest.raises(ValueError, match="targets_bt must have shape"):
    loss_lib.chunked_cross_entropy_sums(hidden, weight, targets[:, :3], mask, chunk_size=2)
  with pytest.raises(ValueError, match="targets_bt must hold integer token ids"):
    loss_lib.chunked_cross_entropy_sums(hidden, weight, mask, mask, chunk_size=2)
  with pytest.raises(ValueError, match="loss_chunk_size must be >= 0"):
    step.make_train_step(LanguageModel(CONFIG), None, None, loss_chunk_size=-1)


def test_sharded_over_a_mesh_equals_one_device():
  # On 8 devices, batch over fsdp, length over context, vocab over tensor (the output weight's d_model over fsdp):
  # the constrained chunked loss and its gradients equal the single-device numbers.
  import flax.linen as nn
  from jax.sharding import NamedSharding, PartitionSpec as P

  from ssmjax.sharding import MeshConfig, make_mesh

  rng = np.random.default_rng(7)
  hidden = rng.normal(size=(4, 16, 8)).astype(np.float32)
  weight = rng.normal(size=(8, 24)).astype(np.float32)
  targets = rng.integers(0, 24, (4, 16)).astype(np.int32)
  mask = (rng.random((4, 16)) < 0.8).astype(np.float32)

  def loss(h, w):
    return loss_lib.chunked_cross_entropy_sums(h, w, targets, mask, chunk_size=4)[0]

  want, want_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(hidden, weight)
  mesh_config = MeshConfig(data=1, fsdp=2, context=2, tensor=2)
  mesh = make_mesh(mesh_config, jax.devices()[:8])
  h = jax.device_put(hidden, NamedSharding(mesh, P("fsdp", "context", None)))
  w = jax.device_put(weight, NamedSharding(mesh, P("fsdp", "tensor")))
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(mesh_config.resolved_rules())):
    got, got_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(h, w)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(got_grads, want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
