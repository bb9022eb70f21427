"""Decode-time caches: per-layer state pytrees, the decode cursor, and their logical sharding names (SPEC §5.1).

One entry per symbol of ``ModelConfig.pattern``:

  ``M`` Mamba-2  `Mamba2State`: ``conv`` (B, conv_dim, K) in the compute dtype, the last K pre-conv xBC inputs, oldest
                 first, channels group-major as the mixer's conv ((G, Hg*P + 2N) flattened: each group's
                 ``[x_g, B_g, C_g]`` contiguous); ``ssm`` (B, H, P, N) float32.
  ``M`` Mamba-1  `Mamba1State`: ``conv`` (B, E, K); ``ssm`` (B, E, N) float32.
  ``*``          `KVCache`: ``k``, ``v`` (B, KV, S, head_dim) in the compute dtype, preallocated for S = ``max_len``
                 slots; slot s holds the token at padded position s. Head-major (HF's layout) rather than
                 Megatron's sequence-major: the decode-step products are then plain batched matmuls (on XLA:CPU the
                 sequence-major layout made one attention step 20x slower).
  ``*`` + conv   `ConvKVCache` (attention with ``attention.d_conv > 0``, mamba_ssm's MHA): the `KVCache` plus ``conv``
                 (B, (H + 2 KV) * head_dim, K) in the compute dtype, the last K pre-conv q|k|v inputs, oldest first,
                 channels ``[q, k, v]`` head-major (mamba_ssm's layout).
  ``-``          ``None`` (an MLP keeps no state).

`Cursor` says where the next tokens go. Prompts of different lengths are **left-padded** to a common length: sequence
b's first ``offsets[b]`` slots are padding, and ``index`` slots have been filled for every sequence. Padding contributes
nothing: the Mamba mixers zero the pre-conv inputs and dt at padded slots (so the conv window and the SSM state of a
sequence are exactly those of its unpadded prompt), attention masks padded keys and rotates each sequence's queries
and keys by its own position ``slot - offsets[b]``.

Logical axis names (`cache_logical_axes`) reuse `ssmjax.sharding`'s head/state names and add the cache-only names in
`CACHE_RULES`; pass ``DEFAULT_RULES + CACHE_RULES`` (or `cache_shardings`) to shard a cache over a mesh.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from ssmjax import sharding
from ssmjax.config import ATTENTION, MAMBA, MLP, ModelConfig

# Cache-only logical axes. Heads, head dim, d_state, d_inner and the conv width reuse the parameter names.
CACHE_BATCH = "cache_batch"
CACHE_LENGTH = "cache_length"  # KV slots
CONV_CHANNELS = "cache_conv_channels"  # Mamba-2 conv channels, group-major: contiguous blocks are whole groups
CACHE_RULES: tuple[tuple[str, Any], ...] = (
    (CACHE_BATCH, ("data", "fsdp")),
    (CACHE_LENGTH, None),
    (CONV_CHANNELS, "tensor"),  # as ssm_groups: a tensor axis that divides ngroups gives each device whole groups
)


@flax.struct.dataclass
class Mamba2State:
  conv: jax.Array  # (B, conv_dim, K)
  ssm: jax.Array  # (B, H, P, N) float32

  @staticmethod
  def logical_axes() -> "Mamba2State":
    return Mamba2State(conv=PartitionSpec(CACHE_BATCH, CONV_CHANNELS, sharding.CONV_KERNEL),
                       ssm=PartitionSpec(CACHE_BATCH, sharding.SSM_HEADS, sharding.HEAD_DIM, sharding.SSM_STATE))


@flax.struct.dataclass
class Mamba1State:
  conv: jax.Array  # (B, E, K)
  ssm: jax.Array  # (B, E, N) float32

  @staticmethod
  def logical_axes() -> "Mamba1State":
    return Mamba1State(conv=PartitionSpec(CACHE_BATCH, sharding.SSM_INNER, sharding.CONV_KERNEL),
                       ssm=PartitionSpec(CACHE_BATCH, sharding.SSM_INNER, sharding.SSM_STATE))


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # (B, KV, S, head_dim)
  v: jax.Array  # (B, KV, S, head_dim)

  @staticmethod
  def logical_axes() -> "KVCache":
    spec = PartitionSpec(CACHE_BATCH, sharding.KV_HEADS, CACHE_LENGTH, sharding.HEAD_DIM)
    return KVCache(k=spec, v=spec)


@flax.struct.dataclass
class ConvKVCache(KVCache):
  conv: jax.Array  # (B, (H + 2 KV) * head_dim, K): pre-conv q|k|v inputs

  @staticmethod
  def logical_axes() -> "ConvKVCache":
    spec = PartitionSpec(CACHE_BATCH, sharding.KV_HEADS, CACHE_LENGTH, sharding.HEAD_DIM)
    # The q|k|v channel axis mixes query and kv heads, so no split of it lines up with the heads: replicated (the
    # state is K * qkv_dim values per sequence, small next to the keys and values).
    return ConvKVCache(k=spec, v=spec, conv=PartitionSpec(CACHE_BATCH, None, sharding.CONV_KERNEL))


@flax.struct.dataclass
class Cursor:
  """``index`` () int32: slots filled so far (the slot of the next token); ``offsets`` (B,) int32: left padding."""

  index: jax.Array
  offsets: jax.Array

  def slots(self, length: int) -> jax.Array:
    """(T,) the slots of the next ``length`` tokens."""
    return self.index + jnp.arange(length, dtype=jnp.int32)

  def valid(self, length: int) -> jax.Array:
    """(B, T) bool: True where the next ``length`` slots hold real tokens (not left padding)."""
    return self.slots(length)[None, :] >= self.offsets[:, None]

  def positions(self, length: int) -> jax.Array:
    """(B, T) int32 per-sequence token positions of the next ``length`` slots (0 at padding)."""
    return jnp.maximum(self.slots(length)[None, :] - self.offsets[:, None], 0)

  def advance(self, length: int) -> "Cursor":
    return self.replace(index=self.index + length)

  @staticmethod
  def logical_axes() -> "Cursor":
    return Cursor(index=PartitionSpec(), offsets=PartitionSpec(CACHE_BATCH))


@flax.struct.dataclass
class ModelCache:
  """The cache of a whole model: ``layers[i]`` for the i-th pattern symbol, and the shared `Cursor`."""

  layers: tuple
  cursor: Cursor

  @property
  def max_len(self) -> int | None:
    """KV slots of the attention layers (None for a model without attention: its state has no length)."""
    for layer in self.layers:
      if isinstance(layer, KVCache):
        return layer.k.shape[2]
    return None


def init_layer_cache(kind: str, config: ModelConfig, batch: int,
                     max_len: int) -> Mamba1State | Mamba2State | KVCache | ConvKVCache | None:
  """The zero state of one layer of ``kind`` (a pattern symbol) for ``batch`` sequences of up to ``max_len`` tokens."""
  dtype, d_model = jnp.dtype(config.dtype), config.d_model
  if kind == MAMBA and config.mamba_version == 2:
    m = config.mamba2
    return Mamba2State(conv=jnp.zeros((batch, m.conv_dim(d_model), m.d_conv), dtype),
                       ssm=jnp.zeros((batch, m.resolved_nheads(d_model), m.headdim, m.d_state), jnp.float32))
  if kind == MAMBA:
    m = config.mamba1
    return Mamba1State(conv=jnp.zeros((batch, m.d_inner(d_model), m.d_conv), dtype),
                       ssm=jnp.zeros((batch, m.d_inner(d_model), m.d_state), jnp.float32))
  if kind == ATTENTION:
    a = config.attention
    shape = (batch, a.resolved_kv_heads(), max_len, a.resolved_head_dim(d_model))
    if a.d_conv:
      return ConvKVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                         conv=jnp.zeros((batch, a.qkv_dim(d_model), a.d_conv), dtype))
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
  if kind == MLP:
    return None
  raise ValueError(f"unknown layer kind {kind!r}; expected one of 'M', '*', '-'")


def init_cache(config: ModelConfig, batch: int, max_len: int, offsets: jax.Array | Sequence[int] | None = None
               ) -> ModelCache:
  """An empty cache for ``batch`` sequences and ``max_len`` slots (prompt plus generated tokens, padding included).

  ``offsets`` (B,): the left padding of each sequence (default none). Writing past ``max_len`` is not detected inside
  a compiled step, so size it for the whole generation.
  """
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  offsets = jnp.zeros((batch,), jnp.int32) if offsets is None else jnp.asarray(offsets, jnp.int32)
  if offsets.shape != (batch,):
    raise ValueError(f"offsets must have shape (batch,) = ({batch},), got {offsets.shape}")
  layers = tuple(init_layer_cache(kind, config, batch, max_len) for kind in config.pattern)
  return ModelCache(layers=layers, cursor=Cursor(index=jnp.zeros((), jnp.int32), offsets=offsets))


def cache_logical_axes(cache: ModelCache) -> ModelCache:
  """The same tree with a logical ``PartitionSpec`` per leaf."""
  layers = tuple(None if layer is None else type(layer).logical_axes() for layer in cache.layers)
  return ModelCache(layers=layers, cursor=Cursor.logical_axes())


def cache_shardings(cache: ModelCache, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES + CACHE_RULES) -> ModelCache:
  """The tree of ``NamedSharding`` s of ``cache`` on ``mesh`` under ``rules``."""
  return nn.logical_to_mesh_sharding(cache_logical_axes(cache), mesh, list(rules))


def cache_nbytes(cache: Any) -> int:
  """Bytes held by a cache (or any tree of arrays / ShapeDtypeStructs)."""
  return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(cache))
