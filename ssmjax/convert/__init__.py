"""Loading foreign checkpoints into ssmjax parameter trees (and, later, exporting them)."""

from ssmjax.convert.hf import load_pretrained

__all__ = ["load_pretrained"]
