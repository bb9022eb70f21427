"""Language models built from a `ModelConfig` pattern; ``python -m ssmjax.models PRESET`` prints parameter counts."""

from ssmjax.models.counting import count_params, param_breakdown
from ssmjax.models.lm import LanguageModel

__all__ = ["LanguageModel", "count_params", "param_breakdown"]
