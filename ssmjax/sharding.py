"""Logical axis names for parameters and activations, and the default rules that map them onto a mesh.

Every parameter is created with a tuple of logical names (``nn.with_logical_partitioning``) and the main activations
are constrained by name (`constrain`). Which mesh axis a name lands on is config, not code: `DEFAULT_RULES` maps the
names onto the ``("data", "fsdp", "tensor")`` mesh; pass other rules to ``nn.logical_axis_rules`` to change it.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"  # d_model
MLP_HIDDEN = "mlp"  # MLP hidden size
HEADS = "heads"  # attention query heads
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
SSM_INNER = "ssm_inner"  # Mamba d_inner channels (heads x head dim for Mamba-2)
SSM_HEADS = "ssm_heads"  # Mamba-2 heads
SSM_GROUPS = "ssm_groups"  # Mamba-2 B/C groups; the fused in_proj and the conv are laid out group-major
SSM_STATE = "ssm_state"  # d_state
CONV_KERNEL = "conv_kernel"
# Activation axes.
BATCH = "activation_batch"
LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_VOCAB = "activation_vocab"

MESH_AXES = ("data", "fsdp", "tensor")

# One rule per logical name. Parameters: FSDP shards d_model, tensor parallelism shards heads / channels / vocab.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (MLP_HIDDEN, "tensor"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (HEAD_DIM, None),
    (SSM_INNER, "tensor"),
    (SSM_HEADS, "tensor"),
    (SSM_GROUPS, "tensor"),
    (SSM_STATE, None),
    (CONV_KERNEL, None),
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_VOCAB, "tensor"),
)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrain an activation's sharding by logical names; a no-op outside a mesh + rules context."""
  return nn.with_logical_constraint(x, tuple(names))
