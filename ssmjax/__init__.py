"""ssmjax: Mamba, Mamba-2, Transformer and Mamba-2-Hybrid language models in JAX/Flax."""

from ssmjax import presets
from ssmjax.config import (AttentionConfig, Mamba1Config, Mamba2Config, MLPConfig, ModelConfig, hybrid_pattern,
                           state_spaces_pattern)
from ssmjax.convert import load_pretrained
from ssmjax.generate import generate  # shadows the module attribute: `from ssmjax.generate import X` for the rest
from ssmjax.models import LanguageModel, count_params, param_breakdown

__all__ = [
    "AttentionConfig",
    "LanguageModel",
    "MLPConfig",
    "Mamba1Config",
    "Mamba2Config",
    "ModelConfig",
    "count_params",
    "generate",
    "hybrid_pattern",
    "load_pretrained",
    "param_breakdown",
    "presets",
    "state_spaces_pattern",
]
