"""Loading foreign checkpoints (HF transformers, state-spaces, Megatron-LM) into ssmjax, and exporting to HF.

``ssmjax.load_pretrained(path)`` detects the format and returns ``(ModelConfig, params)``; ``python -m
ssmjax.convert`` writes ssmjax checkpoints (``--from``) or HF transformers directories (``--to hf``).
"""

from ssmjax.convert.api import FORMATS, detect_format, load_pretrained, open_checkpoint

__all__ = ["FORMATS", "detect_format", "load_pretrained", "open_checkpoint"]
