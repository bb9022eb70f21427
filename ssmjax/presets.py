"""Named model configurations: the paper's 8B models, the 800M hybrid, the state-spaces sizes, and tiny test models.

``presets.get(name) -> ModelConfig``; ``presets.names()`` lists them. ``configs/models/<name>.gin`` binds the same
configs for gin users (tests check that each gin file gives exactly the preset).
"""

from __future__ import annotations

from typing import Callable

from ssmjax.config import (AttentionConfig, Mamba1Config, Mamba2Config, MLPConfig, ModelConfig, hybrid_pattern,
                           state_spaces_pattern)

# The NVIDIA 8B models' SentencePiece vocabulary ("256k"); Megatron pads to a multiple of 128, a no-op for 256,000.
NVIDIA_VOCAB = 256_000
# GPT-NeoX-20B's 50,277 tokens padded as the state-spaces checkpoints are (to a multiple of 8 / 16).
NEOX_VOCAB_MAMBA1 = 50_280
NEOX_VOCAB_MAMBA2 = 50_288

# Megatron's Mamba-2 mixer defaults, used by all of the paper's Mamba-2 layers (SPEC §1.2).
MEGATRON_MAMBA2 = Mamba2Config(d_state=128, d_conv=4, expand=2, headdim=64, ngroups=8, chunk_size=128)


def _paper_8b(pattern: str, **overrides) -> ModelConfig:
  """The shared shape of the 8B models: d_model 4096, untied embeddings, RMSNorm, no biases, Megatron init."""
  base = dict(vocab_size=NVIDIA_VOCAB, d_model=4096, pattern=pattern, mamba2=MEGATRON_MAMBA2, norm="rmsnorm",
              norm_eps=1e-5, tie_embeddings=False, init_style="megatron", init_std=0.02)
  base.update(overrides)
  return ModelConfig(**base)


def mamba_8b() -> ModelConfig:
  """8B Mamba-1. Its shape is not published (SPEC §1.2): 56 layers like Mamba-2 8B, mamba_ssm defaults (d_state 16)."""
  return _paper_8b("M" * 56, mamba_version=1, mamba1=Mamba1Config())


def mamba2_8b() -> ModelConfig:
  """nvidia/mamba2-8b-3t-4k: 56 Mamba-2 layers, 8 groups, d_state 128, head dim 64."""
  return _paper_8b("M" * 56)


def mamba2_hybrid_8b() -> ModelConfig:
  """nvidia/mamba2-hybrid-8b-3t-4k: 24 Mamba-2 + 4 attention (GQA 32/8, no RoPE) + 28 GELU MLP (16384) layers."""
  return _paper_8b(hybrid_pattern(56, 0.08, 0.5),
                   attention=AttentionConfig(num_heads=32, num_kv_heads=8, head_dim=128, rotary_fraction=0.0),
                   mlp=MLPConfig(hidden_size=16384, activation="gelu"))


def transformer_8b() -> ModelConfig:
  """nvidia/gpt3-8b-multi-3.5t-base: 32 x (MHA + squared-ReLU MLP), layernorm-1p, RoPE on half of each head."""
  return _paper_8b("*-" * 32, norm="layernorm_1p", init_depth=32,
                   attention=AttentionConfig(num_heads=32, head_dim=128, rotary_fraction=0.5, rope_theta=10000.0),
                   mlp=MLPConfig(hidden_size=16384, activation="squared_relu"))


def mamba2_hybrid_800m() -> ModelConfig:
  """The 800M hybrid of Megatron's examples/mamba/train.sh: 48 layers, d_model 1024, 16 heads, 8 KV groups."""
  return _paper_8b(hybrid_pattern(48, 0.08, 0.5), d_model=1024,
                   attention=AttentionConfig(num_heads=16, num_kv_heads=8, head_dim=64, rotary_fraction=0.0),
                   mlp=MLPConfig(hidden_size=4096, activation="gelu"))


# state-spaces sizes (SPEC §6.3): (n_layer, d_model).
STATE_SPACES_SIZES = {
    "130m": (24, 768), "370m": (48, 1024), "790m": (48, 1536), "1.4b": (48, 2048), "2.8b": (64, 2560),
}
STATE_SPACES_MAMBA2_NAMES = {"130m": "130m", "370m": "370m", "790m": "780m", "1.4b": "1.3b", "2.8b": "2.7b"}


def _state_spaces(n_layer: int, d_model: int, version: int) -> ModelConfig:
  return ModelConfig(
      vocab_size=NEOX_VOCAB_MAMBA1 if version == 1 else NEOX_VOCAB_MAMBA2, d_model=d_model,
      pattern=state_spaces_pattern(n_layer), mamba_version=version, mamba1=Mamba1Config(),
      mamba2=Mamba2Config(d_state=128, headdim=64, ngroups=1, chunk_size=256), norm="rmsnorm", norm_eps=1e-5,
      tie_embeddings=True, residual_in_fp32=True, init_style="mamba_ssm", init_std=0.02)


# Tiny models for tests and CPU experiments.
TINY_VOCAB = 512


def tiny_mamba() -> ModelConfig:
  return ModelConfig(vocab_size=TINY_VOCAB, d_model=64, pattern="MMMM", mamba_version=1,
                     mamba1=Mamba1Config(d_state=8), tie_embeddings=True, init_style="mamba_ssm")


def tiny_mamba2() -> ModelConfig:
  return ModelConfig(vocab_size=TINY_VOCAB, d_model=64, pattern="MMMM",
                     mamba2=Mamba2Config(d_state=16, headdim=16, ngroups=2, chunk_size=16))


def tiny_transformer() -> ModelConfig:
  return ModelConfig(vocab_size=TINY_VOCAB, d_model=64, pattern="*-*-", norm="layernorm_1p",
                     attention=AttentionConfig(num_heads=4, rotary_fraction=0.5),
                     mlp=MLPConfig(hidden_size=256, activation="squared_relu"))


def tiny_hybrid() -> ModelConfig:
  return ModelConfig(vocab_size=TINY_VOCAB, d_model=64, pattern=hybrid_pattern(8, 0.125, 0.5),
                     mamba2=Mamba2Config(d_state=16, headdim=16, ngroups=2, chunk_size=16),
                     attention=AttentionConfig(num_heads=4, num_kv_heads=2),
                     mlp=MLPConfig(hidden_size=256, activation="gelu"))


def tiny_llama() -> ModelConfig:
  return ModelConfig(vocab_size=TINY_VOCAB, d_model=64, pattern="*-*-",
                     attention=AttentionConfig(num_heads=4, num_kv_heads=2, rotary_fraction=1.0),
                     mlp=MLPConfig(hidden_size=128, activation="swiglu"))


_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "mamba_8b": mamba_8b,
    "mamba2_8b": mamba2_8b,
    "transformer_8b": transformer_8b,
    "mamba2_hybrid_8b": mamba2_hybrid_8b,
    "mamba2_hybrid_800m": mamba2_hybrid_800m,
    **{f"mamba_{size}": (lambda s=size: _state_spaces(*STATE_SPACES_SIZES[s], 1)) for size in STATE_SPACES_SIZES},
    **{f"mamba2_{STATE_SPACES_MAMBA2_NAMES[size]}": (lambda s=size: _state_spaces(*STATE_SPACES_SIZES[s], 2))
       for size in STATE_SPACES_SIZES},
    "tiny_mamba": tiny_mamba,
    "tiny_mamba2": tiny_mamba2,
    "tiny_transformer": tiny_transformer,
    "tiny_hybrid": tiny_hybrid,
    "tiny_llama": tiny_llama,
}


def names() -> list[str]:
  """All preset names."""
  return list(_PRESETS)


def get(name: str) -> ModelConfig:
  """The preset ``name``; raises ValueError listing the known names otherwise."""
  if name not in _PRESETS:
    raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(_PRESETS)}")
  return _PRESETS[name]()
