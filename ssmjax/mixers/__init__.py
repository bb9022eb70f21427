"""Sequence mixers: Mamba-1, Mamba-2 and causal self-attention."""
