"""Context parallelism in the model: the sequence split over the ``context`` mesh axis, one contiguous part per device.

The ``activation_length`` logical-axis rule names the mesh axes that split the sequence (``"context"`` by default,
`ssmjax.sharding`). When a mesh is active (``jax.set_mesh`` or the training loop's ``with mesh:``) and those axes
have more than one device, `context_layout` returns a `ContextLayout` and the layers that mix positions run their
sequence-parallel form; everything else in the model (projections, norms, MLPs, the loss) works token by token and
XLA partitions it over the sequence like any other axis. The three mixing ops:

  scans      `pallas_kernels.ssd.context_parallel` / `pallas_kernels.selective_scan.context_parallel`: each shard scans
             from a zero state, the shards exchange (final state, total decay), each corrects its outputs with the
             state entering it (dispatched from `ssmjax.mixers.scans`);
  conv       `causal_conv1d`: each shard receives the last K-1 inputs of the shard before it (`lax.ppermute`; zeros
             for the first shard), the causal conv's left context;
  attention  `causal_attention`: ring attention. Each device keeps its queries; the key/value blocks travel around
             the ring of context shards (`lax.ppermute`), n steps for n shards, and an online softmax accumulates them
             with the causal mask of the blocks' global positions, tile by tile (512 queries x 512 keys). Memory per
             device: one key/value block and one score tile; steps and tiles are rematerialised in the backward pass.
             No load balancing: a shard still computes (and masks) the blocks after it, so causal attention does
             twice the FLOPs of a balanced (zig-zag) layout and the last shard bounds the step time.

RoPE needs no change: it is applied to the global (sharded) arrays with the global positions, outside `shard_map`.
Batch, heads and channels stay sharded as their rules say, inside each op's `shard_map`. The ops fall back to the
ordinary (unsplit) ones when the context axes do not divide the length (e.g. an evaluation batch of odd length): XLA
then gathers the sequence. Decoding (a cache) never uses them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from pallas_kernels import common
from ssmjax.sharding import BATCH, LENGTH

__all__ = ["ContextLayout", "causal_attention", "causal_conv1d", "context_layout"]

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class ContextLayout:
  """The active mesh and its mesh axes that split the sequence (more than one device in all)."""

  mesh: Any
  context: tuple[str, ...]

  @property
  def size(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.context)

  def axes(self, logical_name: str | None, size: int) -> tuple[str, ...]:
    """The mesh axes the rules in force give ``logical_name``, keeping those of this mesh, not splitting the sequence
    and dividing ``size`` (a dimension they cannot split is replicated)."""
    if logical_name is None:
      return ()
    entry = nn.logical_to_mesh_axes((logical_name,))[0]
    kept, parts = [], 1
    for name in () if entry is None else (tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)):
      if name in self.mesh.shape and name not in self.context and size % (parts * self.mesh.shape[name]) == 0:
        kept.append(name)
        parts *= self.mesh.shape[name]
    return tuple(kept)


def context_layout(length: int) -> ContextLayout | None:
  """The layout to run a sequence of ``length`` positions context-parallel, or None for the ordinary ops.

  None without an active mesh or rules, when the ``activation_length`` axes have one device, or when they do not
  divide ``length``.
  """
  from ssmjax.mixers.scans import active_mesh  # local: scans dispatches to this module

  mesh = active_mesh()
  if mesh is None:
    return None
  entry = nn.logical_to_mesh_axes((LENGTH,))[0]
  names = () if entry is None else (tuple(entry) if isinstance(entry, (tuple, list)) else (entry,))
  names = tuple(n for n in names if n in mesh.shape)
  layout = ContextLayout(mesh, names)
  if not names or layout.size == 1 or length % layout.size:
    return None
  return layout


def _check_distinct_axes(layout: ContextLayout, *specs) -> None:
  used = [a for spec in specs for entry in spec if entry is not None
          for a in (entry if isinstance(entry, tuple) else (entry,))]
  if len(used) != len(set(used)):
    raise ValueError(f"a mesh axis shards two dimensions of one array: {specs} (check the logical-axis rules)")


def causal_conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, layout: ContextLayout,
                  channel_names: Sequence[str | None]) -> jax.Array:
  """`ssmjax.layers.conv.causal_conv1d` with the time axis split over ``layout.context``.

  x (B, T, *channels), kernel (K, *channels), bias (*channels) or None; ``channel_names`` the channels' logical
  names (their mesh axes come from the rules). Each shard needs at least K-1 positions.
  """
  width, context = kernel.shape[0], layout.context
  local_length = x.shape[1] // layout.size
  if width > 1 and local_length < width - 1:
    raise ValueError(f"x: each of the {layout.size} context shards holds {local_length} positions, fewer than the "
                     f"conv's K-1 = {width - 1}")
  batch = common.spec_entry(layout.axes(BATCH, x.shape[0]))
  channels = tuple(common.spec_entry(layout.axes(name, size)) for name, size in zip(channel_names, x.shape[2:]))
  x_spec, kernel_spec, bias_spec = P(batch, common.spec_entry(context), *channels), P(None, *channels), P(*channels)
  _check_distinct_axes(layout, x_spec)
  shards = layout.size

  def local(x, kernel, bias):
    if width > 1:  # the previous shard's last K-1 inputs; ppermute leaves zeros on shard 0, which no one sends to
      halo = lax.ppermute(x[:, -(width - 1):], context, perm=[(i, i + 1) for i in range(shards - 1)])
      window = jnp.concatenate([halo, x], axis=1)
    else:
      window = x
    y = sum(window[:, k:k + x.shape[1]] * kernel[k] for k in range(width))
    return y if bias is None else y + bias

  return jax.shard_map(local, mesh=layout.mesh, in_specs=(x_spec, kernel_spec, None if bias is None else bias_spec),
                       out_specs=x_spec)(x, kernel, bias)


def _divisor_or_whole(requested: int, size: int) -> int:
  """``requested`` if it divides ``size``, else ``size`` (one block)."""
  return requested if 0 < requested <= size and size % requested == 0 else size


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, layout: ContextLayout, *, q_block: int = 512,
                     kv_block: int = 512) -> jax.Array:
  """Causal softmax attention (GQA) with the time axis split over ``layout.context``: ring attention.

  q (B, T, H, K), k and v (B, T, KV, K) -> (B, T, H, K) in q's dtype; softmax(q k^T / sqrt(K)) in float32, query t
  seeing keys s <= t (global positions), head h reading kv head h // (H / KV).

  Each ring step (one key/value block of T/n positions) is computed in tiles of ``q_block`` queries x ``kv_block``
  keys (each used when it divides T/n, else the whole block) with an online softmax, so a device holds one
  (B, H, q_block, kv_block) score tile at a time. Ring steps and tiles are rematerialised in the backward pass: it
  keeps one accumulator per ring step, not the scores.
  """
  batch_size, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  if heads % kv_heads:
    raise ValueError(f"q has {heads} heads, not a multiple of the {kv_heads} kv heads of k and v")
  batch = common.spec_entry(layout.axes(BATCH, batch_size))
  head_axes = layout.axes("heads", heads)
  if head_axes != layout.axes("kv_heads", kv_heads):  # q heads and kv heads must split alike to keep the GQA map
    head_axes = ()
  context, shards = layout.context, layout.size
  spec = P(batch, common.spec_entry(context), common.spec_entry(head_axes), None)
  _check_distinct_axes(layout, spec)
  block = length // shards
  qb, kb = _divisor_or_whole(q_block, block), _divisor_or_whole(kv_block, block)
  nq, nk = block // qb, block // kb
  scale = 1.0 / math.sqrt(head_dim)
  masked = jnp.finfo(_F32).min
  ring = [(i, (i + 1) % shards) for i in range(shards)]

  def tile(q_bqgrd, q_pos, k_bsgd, v_bsgd, k_pos, m_bgrq, l_bgrq, acc_bqgrd):
    """The online-softmax update of one query tile by one key tile."""
    scores = jnp.einsum("bqgrd,bsgd->bgrqs", q_bqgrd, k_bsgd, preferred_element_type=_F32) * scale
    scores = jnp.where(k_pos[None, :] <= q_pos[:, None], scores, masked)
    m_new = jnp.maximum(m_bgrq, jnp.max(scores, axis=-1))
    probs = jnp.exp(scores - m_new[..., None])
    correction = jnp.exp(m_bgrq - m_new)
    l_new = l_bgrq * correction + jnp.sum(probs, axis=-1)
    acc = acc_bqgrd * jnp.moveaxis(correction, -1, 1)[..., None] + jnp.einsum(
        "bgrqs,bsgd->bqgrd", probs, v_bsgd.astype(_F32))
    return m_new, l_new, acc

  def local(q, k, v):
    b, t, h, d = q.shape
    g = k.shape[2]
    r = h // g
    me = lax.axis_index(context)
    q_tiles = jnp.moveaxis(q.reshape(b, nq, qb, g, r, d), 1, 0)  # (nq, b, qb, g, r, d)
    q_pos_tiles = (me * block + jnp.arange(block)).reshape(nq, qb)

    @jax.checkpoint
    def ring_step(carry, s):
      k_blk, v_blk, m, l, acc = carry  # m, l (nq, b, g, r, qb); acc (nq, b, qb, g, r, d)
      source = (me - s) % shards  # whose keys this device holds at step s
      k_tiles = jnp.moveaxis(k_blk.reshape(b, nk, kb, g, d), 1, 0)
      v_tiles = jnp.moveaxis(v_blk.reshape(b, nk, kb, g, d), 1, 0)
      k_pos_tiles = (source * block + jnp.arange(block)).reshape(nk, kb)

      @jax.checkpoint  # the backward pass then keeps the key-tile carries of one query tile at a time
      def query_tile(args):
        q_tile, q_pos, *stats = args

        @jax.checkpoint
        def key_tile(stats, xs):
          return tile(q_tile, q_pos, *xs, *stats), None

        return lax.scan(key_tile, tuple(stats), (k_tiles, v_tiles, k_pos_tiles))[0]

      m, l, acc = lax.map(query_tile, (q_tiles, q_pos_tiles, m, l, acc))
      return (lax.ppermute(k_blk, context, ring), lax.ppermute(v_blk, context, ring), m, l, acc), None

    stats = jnp.full((nq, b, g, r, qb), masked, _F32)
    # The carry is typed as varying over the mesh axes like q (a scan's carry must keep its type inside shard_map).
    carry = common.vary_alike(q, k, v, stats, jnp.zeros_like(stats), jnp.zeros((nq, b, qb, g, r, d), _F32))[1:]
    (_, _, _, l, acc), _ = lax.scan(ring_step, carry, jnp.arange(shards))
    out = acc / jnp.moveaxis(l, -1, 2)[..., None]  # (nq, b, qb, g, r, d)
    return jnp.moveaxis(out, 0, 1).reshape(b, t, h, d).astype(q.dtype)

  return jax.shard_map(local, mesh=layout.mesh, in_specs=(spec, spec, spec), out_specs=spec)(q, k, v)
