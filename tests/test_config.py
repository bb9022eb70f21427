"""Configs: the hybrid allocation against the released patterns, state-spaces patterns, and validation errors."""

import pytest

from ssmjax.config import (AttentionConfig, Mamba2Config, ModelConfig, hybrid_pattern, state_spaces_pattern)

# The released patterns (SPEC §1.4): nvidia/mamba2-hybrid-8b-3t-4k and the 800M model of Megatron's train.sh.
HYBRID_8B = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
HYBRID_800M = "M-M-M--M-*M-M-M-M--*M-M-M-M-*M--M-M-M-*M-M--M-M-"


def test_hybrid_pattern_gives_released_8b_pattern():
  assert hybrid_pattern(56, 0.08, 0.5) == HYBRID_8B
  assert (HYBRID_8B.count("M"), HYBRID_8B.count("*"), HYBRID_8B.count("-")) == (24, 4, 28)


def test_hybrid_pattern_gives_released_800m_pattern():
  assert hybrid_pattern(48, 0.08, 0.5) == HYBRID_800M


def test_hybrid_pattern_without_attention_or_mlp_is_pure_mamba():
  assert hybrid_pattern(7, 0.0, 0.0) == "M" * 7


def test_hybrid_pattern_attention_only_starts_and_ends_with_mamba():
  pattern = hybrid_pattern(10, 0.2, 0.0)
  assert pattern.count("*") == 2 and pattern[0] == "M" and pattern[-1] == "M"


@pytest.mark.parametrize("args, message", [
    ((0, 0.1, 0.1), "num_layers"),
    ((8, -0.1, 0.1), "attention_ratio"),
    ((8, 0.1, 1.5), "mlp_ratio"),
    ((8, 0.6, 0.6), "attention_ratio \\+ mlp_ratio"),
])
def test_hybrid_pattern_rejects_bad_arguments(args, message):
  with pytest.raises(ValueError, match=message):
    hybrid_pattern(*args)


def test_state_spaces_pattern_places_attention_and_mlps():
  assert state_spaces_pattern(3) == "MMM"
  assert state_spaces_pattern(3, attn_layer_idx=(1,)) == "M*M"
  assert state_spaces_pattern(2, attn_layer_idx=(0,), mlp=True) == "*-M-"
  with pytest.raises(ValueError, match="attn_layer_idx"):
    state_spaces_pattern(2, attn_layer_idx=(2,))


@pytest.mark.parametrize("kwargs, message", [
    (dict(pattern="MXM"), "unknown layer symbols"),
    (dict(pattern=""), "pattern"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(mamba_version=3), "mamba_version"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mamba2=Mamba2Config(headdim=48)), "mamba2.headdim"),
    (dict(mamba2=Mamba2Config(headdim=16, ngroups=3)), "mamba2.ngroups"),
    (dict(mamba2=Mamba2Config(headdim=16, chunk_size=0)), "mamba2.chunk_size"),
    (dict(pattern="*", attention=AttentionConfig(num_heads=4, num_kv_heads=3)), "attention.num_kv_heads"),
    (dict(pattern="*", attention=AttentionConfig(num_heads=5)), "attention.num_heads"),
    (dict(pattern="*", attention=AttentionConfig(num_heads=4, rotary_fraction=1.5)), "attention.rotary_fraction"),
])
def test_model_config_rejects_bad_values_naming_the_field(kwargs, message):
  base = dict(vocab_size=32, d_model=64, pattern="M", mamba2=Mamba2Config(headdim=16))
  base.update(kwargs)
  with pytest.raises(ValueError, match=message):
    ModelConfig(**base)


def test_num_layers_counts_every_symbol():
  assert ModelConfig(vocab_size=8, d_model=64, pattern="M-*", mamba2=Mamba2Config(headdim=16),
                     attention=AttentionConfig(num_heads=4)).num_layers == 3
