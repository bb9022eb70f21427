"""Leaf layers against NumPy formulas written here: norms, causal conv, RoPE, MLP activations, attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from ssmjax.config import MLPConfig
from ssmjax.layers.conv import CausalConv1d, causal_conv1d, causal_conv1d_reference
from ssmjax.layers.mlp import MLP
from ssmjax.layers.norms import GatedRMSNorm, LayerNorm, RMSNorm
from ssmjax.layers.params import Inits
from ssmjax.layers.rope import apply_rope
from ssmjax.mixers.attention import attention_reference, causal_attention

RNG = np.random.default_rng(0)


def randn(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def init_apply(module, *args):
  variables = module.init(jax.random.PRNGKey(0), *args)
  # Perturb the initial values so that a parameter the layer ignores (e.g. a norm scale of ones) is noticed.
  params = jax.tree_util.tree_map(lambda p: np.asarray(p) + 0.1 * randn(*p.shape), nn.meta.unbox(variables["params"]))
  return params, np.asarray(module.apply({"params": params}, *args))


def test_rms_norm_matches_formula():
  x = randn(2, 5, 16)
  params, y = init_apply(RMSNorm(eps=1e-5), x)
  expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * params["scale"]
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("zero_centered", [False, True], ids=["layernorm", "layernorm_1p"])
def test_layer_norm_matches_formula(zero_centered):
  x = randn(2, 5, 16) * 3 + 1
  params, y = init_apply(LayerNorm(eps=1e-5, zero_centered_gain=zero_centered), x)
  gain = params["scale"] + (1.0 if zero_centered else 0.0)
  normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, normed * gain + params["bias"], rtol=1e-5, atol=1e-5)


def test_layer_norm_1p_starts_as_identity_gain():
  variables = LayerNorm(zero_centered_gain=True).init(jax.random.PRNGKey(0), randn(1, 2, 8))
  np.testing.assert_array_equal(np.asarray(nn.meta.unbox(variables["params"])["scale"]), 0.0)


@pytest.mark.parametrize("group_size", [4, 8, 16], ids=["4_groups", "2_groups", "ungrouped"])
def test_gated_rms_norm_gates_then_normalises_each_group(group_size):
  x, z = randn(2, 3, 16), randn(2, 3, 16)
  params, y = init_apply(GatedRMSNorm(group_size=group_size, eps=1e-5), x, z)
  gated = x * z / (1 + np.exp(-z))
  groups = gated.reshape(2, 3, 16 // group_size, group_size)
  normed = (groups / np.sqrt((groups**2).mean(-1, keepdims=True) + 1e-5)).reshape(2, 3, 16)
  np.testing.assert_allclose(y, normed * params["scale"], rtol=1e-5, atol=1e-5)


def test_gated_rms_norm_rejects_group_size_not_dividing_features():
  with pytest.raises(ValueError, match="group_size"):
    GatedRMSNorm(group_size=5).init(jax.random.PRNGKey(0), randn(1, 2, 16), randn(1, 2, 16))


@pytest.mark.parametrize("width, length", [(4, 1), (4, 3), (4, 11), (2, 6)])
def test_causal_conv_matches_numpy_cross_correlation(width, length):
  # PyTorch Conv1d(groups=C, padding=K-1), first T outputs: y[t, c] = sum_k w[c, k] x[t - K + 1 + k, c].
  x, kernel, bias = randn(2, length, 6), randn(width, 6), randn(6)
  expected = np.zeros_like(x)
  for t in range(length):
    for k in range(width):
      source = t - width + 1 + k
      if source >= 0:
        expected[:, t] += kernel[k] * x[:, source]
  expected += bias
  np.testing.assert_allclose(np.asarray(causal_conv1d(x, kernel, bias)), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(causal_conv1d_reference(x, kernel, bias)), expected, rtol=1e-5, atol=1e-5)


def test_causal_conv_module_handles_grouped_channels():
  x = randn(2, 7, 3, 5)
  params, y = init_apply(CausalConv1d(4, ("ssm_groups", None)), x)
  assert params["kernel"].shape == (4, 3, 5) and params["bias"].shape == (3, 5)
  flat = np.asarray(causal_conv1d(x.reshape(2, 7, 15), params["kernel"].reshape(4, 15), params["bias"].reshape(15)))
  np.testing.assert_allclose(y, flat.reshape(2, 7, 3, 5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rotary_dim", [8, 4, 0], ids=["full", "half", "none"])
def test_rope_rotates_pairs_i_and_i_plus_half(rotary_dim):
  x, positions, theta = randn(2, 5, 3, 8), np.arange(5), 10000.0
  y = np.asarray(apply_rope(x, positions, rotary_dim, theta))
  expected = x.copy()
  half = rotary_dim // 2
  for i in range(half):
    angle = positions[None, :, None] * theta ** (-2 * i / rotary_dim)
    a, b = x[..., i], x[..., i + half]
    expected[..., i] = a * np.cos(angle) - b * np.sin(angle)
    expected[..., i + half] = b * np.cos(angle) + a * np.sin(angle)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "squared_relu", "swiglu"])
def test_mlp_activations(activation):
  x = randn(2, 3, 8)
  params, y = init_apply(MLP(MLPConfig(hidden_size=12, activation=activation), Inits("megatron", 0.02, 4)), x)
  h = x @ params["fc1"]
  if activation == "gelu":
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  elif activation == "squared_relu":
    h = np.maximum(h, 0) ** 2
  else:
    g = x @ params["gate"]
    h = h * g / (1 + np.exp(-g))
  np.testing.assert_allclose(y, h @ params["fc2"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("heads, kv_heads, length", [(4, 4, 9), (4, 2, 9), (6, 1, 1)], ids=["mha", "gqa", "mqa_T1"])
def test_attention_matches_numpy_softmax(heads, kv_heads, length):
  q, k, v = randn(2, length, heads, 8), randn(2, length, kv_heads, 8), randn(2, length, kv_heads, 8)
  expected = np.zeros_like(q)
  for h in range(heads):
    kh = h // (heads // kv_heads)
    scores = np.einsum("bqd,bsd->bqs", q[:, :, h], k[:, :, kh]) / np.sqrt(8)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected[:, :, h] = np.einsum("bqs,bsd->bqd", weights, v[:, :, kh])
  np.testing.assert_allclose(np.asarray(attention_reference(q, k, v)), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(causal_attention(q, k, v, "xla")), expected, rtol=1e-5, atol=1e-5)


def test_attention_gradients_match_reference():
  q, k, v = randn(1, 6, 4, 8), randn(1, 6, 2, 8), randn(1, 6, 2, 8)
  loss = lambda impl: lambda *a: jnp.sum(jnp.sin(causal_attention(*a, impl)))
  fast = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  slow = jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(fast, slow):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_attention_rejects_unknown_implementation():
  with pytest.raises(ValueError, match="implementation"):
    causal_attention(randn(1, 2, 2, 4), randn(1, 2, 2, 4), randn(1, 2, 2, 4), "flash")
