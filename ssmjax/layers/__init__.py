"""Leaf layers: norms, causal depthwise conv, rotary embeddings, MLPs, embeddings and parameter helpers."""
