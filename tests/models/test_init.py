"""Initialisations follow SPEC §4.4 (Mamba-2, Megatron and mamba_ssm) and §4.5 (Mamba-1)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmjax
from ssmjax.config import AttentionConfig, Mamba1Config, Mamba2Config, MLPConfig, ModelConfig

D_MODEL, LAYERS = 256, 3


def init_params(config):
  params = jax.jit(ssmjax.LanguageModel(config).init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(params["params"]))


def assert_std(array, expected, rel=0.1):
  assert abs(array.std() - expected) < rel * expected, (array.std(), expected)


def assert_uniform(array, bound):
  assert np.abs(array).max() <= bound and np.abs(array).max() > 0.9 * bound
  assert_std(array, bound / math.sqrt(3))


@pytest.fixture(scope="module")
def megatron_hybrid():
  return init_params(ModelConfig(
      vocab_size=512, d_model=D_MODEL, pattern="M*-", mamba2=Mamba2Config(headdim=32, ngroups=2, d_state=16),
      attention=AttentionConfig(num_heads=4), mlp=MLPConfig(hidden_size=1024), init_style="megatron",
      init_std=0.02))


def test_megatron_dense_layers_are_normal_with_scaled_output_projections(megatron_hybrid):
  p, std = megatron_hybrid, 0.02
  assert_std(p["embed"]["embedding"], std)
  assert_std(p["lm_head"], std)
  assert_std(p["layers_1"]["attention"]["q_proj"], std)
  assert_std(p["layers_2"]["mlp"]["fc1"], std)
  assert_std(p["layers_1"]["attention"]["o_proj"], std / math.sqrt(2 * LAYERS))
  assert_std(p["layers_2"]["mlp"]["fc2"], std / math.sqrt(2 * LAYERS))
  assert_std(p["layers_0"]["mixer"]["out_proj"], std / math.sqrt(LAYERS))


def test_mamba2_mixer_init(megatron_hybrid):
  mixer = megatron_hybrid["layers_0"]["mixer"]
  assert_uniform(mixer["in_proj"], 1 / math.sqrt(D_MODEL))  # kaiming_uniform(a=sqrt(5)) in both codebases
  assert_uniform(mixer["conv1d"]["kernel"], 0.5)  # fan_in = d_conv = 4
  A = np.exp(mixer["A_log"])
  assert A.min() >= 1.0 and A.max() <= 16.0
  dt = np.log1p(np.exp(mixer["dt_bias"]))  # softplus(dt_bias) is the initial dt
  assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
  np.testing.assert_array_equal(mixer["D"], 1.0)
  np.testing.assert_array_equal(mixer["norm"]["scale"], 1.0)
  np.testing.assert_array_equal(megatron_hybrid["layers_0"]["norm"]["scale"], 1.0)


def test_mamba_ssm_style_rescales_out_proj_of_the_default_uniform():
  p = init_params(ModelConfig(vocab_size=512, d_model=D_MODEL, pattern="M" * LAYERS,
                              mamba2=Mamba2Config(headdim=32, d_state=16), init_style="mamba_ssm",
                              tie_embeddings=True))
  d_inner = 2 * D_MODEL
  assert_uniform(p["layers_0"]["mixer"]["out_proj"], 1 / math.sqrt(d_inner) / math.sqrt(LAYERS))
  assert "lm_head" not in p


def test_mamba1_mixer_init():
  config = ModelConfig(vocab_size=512, d_model=D_MODEL, pattern="M", mamba_version=1,
                       mamba1=Mamba1Config(d_state=8), init_style="mamba_ssm")
  mixer = init_params(config)["layers_0"]["mixer"]
  rank = math.ceil(D_MODEL / 16)
  np.testing.assert_allclose(np.exp(mixer["A_log"]), np.broadcast_to(np.arange(1, 9), (2 * D_MODEL, 8)), rtol=1e-6)
  assert_uniform(mixer["dt_proj"], rank**-0.5)
  dt = np.log1p(np.exp(mixer["dt_proj_bias"]))
  assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
  assert_uniform(mixer["x_proj"], 1 / math.sqrt(2 * D_MODEL))
  np.testing.assert_array_equal(mixer["D"], 1.0)
