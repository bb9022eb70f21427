"""FLOP counts of the chunked SSD, for kernel cost estimates and for the TFLOP/s that `benchmarks/ssd.py` reports.

The count is the matmul work of the chunked algorithm (`pallas_kernels.ssd.reference.ssd_chunked`), the same for
every implementation so that achieved TFLOP/s compare like with like. A multiply-add is 2 FLOPs. Per chunk of Q
positions (C = ceil(T / Q) chunks per sequence, G groups, H heads, P head dim, N state size):

  C·Bᵀ scores            2 Q² N     per group (shared by the group's heads)
  diagonal block          2 Q² P     per head   (scores ⊙ decay) @ X
  state in -> outputs     2 Q P N    per head   C @ stateᵀ
  chunk -> state          2 Q P N    per head   Xᵀ @ (decay ⊙ B)

Elementwise work (exponentials, masks, the D skip, the inter-chunk recurrence) is O(T·H·(Q + P·N / Q)) and is left
out, as model-FLOP counts usually do. Forward + backward counts three times the forward (the backward does about
twice the forward's matmul work), the usual convention for training FLOPs.
"""

from __future__ import annotations

__all__ = ["ssd_flops", "ssd_transcendentals"]


def ssd_flops(
    batch: int, seqlen: int, nheads: int, headdim: int, ngroups: int, dstate: int, chunk_size: int,
    *, backward: bool = False,
) -> int:
  """Matmul FLOPs of the chunked SSD forward (or forward + backward when `backward`), as the module docstring."""
  q = max(1, min(chunk_size, seqlen))
  nchunks = -(-seqlen // q)
  per_chunk = 2 * q * q * dstate * ngroups + nheads * (2 * q * q * headdim + 4 * q * headdim * dstate)
  forward = batch * nchunks * per_chunk
  return 3 * forward if backward else forward


def ssd_transcendentals(batch: int, seqlen: int, nheads: int, chunk_size: int) -> int:
  """Exponentials of the forward: the [Q, Q] decay matrix and two [Q] vectors per chunk and head."""
  q = max(1, min(chunk_size, seqlen))
  nchunks = -(-seqlen // q)
  return batch * nchunks * nheads * (q * q + 2 * q)
