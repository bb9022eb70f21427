"""Block sizes of the SSD Pallas kernels: one frozen dataclass per backend, with validated per-backend defaults.

The chunk length Q is not a block size: it is the algorithm's `chunk_size` argument (it changes rounding, not the
result). Each kernel pads Q to a length its backend can tile (see `kernel_chunk_length`), and the block sizes below
say how the remaining work is cut into grid steps.
"""

from __future__ import annotations

import dataclasses

from pallas_kernels import common

__all__ = ["SsdGpuBlockSizes", "SsdTpuBlockSizes", "default_block_sizes", "kernel_chunk_length"]


@dataclasses.dataclass(frozen=True)
class SsdTpuBlockSizes:
  """Mosaic (TPU) kernel block sizes.

  Attributes:
    block_heads: heads per grid step. They must share one B/C group (so `block_heads` divides nheads / ngroups):
      C·Bᵀ is then computed once per step for all of them. None: the largest divisor of nheads / ngroups <= 8,
      which keeps a step's VMEM (about 1 MiB per head at Q = 256, P = 64, N = 128, double-buffered) well inside the
      16 MiB default scoped VMEM of v5e.
    vmem_limit_bytes: Mosaic's scoped VMEM limit for the kernels; None keeps the compiler default.
  """

  block_heads: int | None = None
  vmem_limit_bytes: int | None = None

  def __post_init__(self):
    if self.block_heads is not None:
      common.check_positive_int("SsdTpuBlockSizes.block_heads", self.block_heads)
    if self.vmem_limit_bytes is not None:
      common.check_positive_int("SsdTpuBlockSizes.vmem_limit_bytes", self.vmem_limit_bytes)

  def resolve(self, nheads: int, ngroups: int) -> SsdTpuBlockSizes:
    """These block sizes with None replaced by the default for the shapes; raises ValueError if they do not fit."""
    heads_per_group = nheads // ngroups
    block_heads = self.block_heads
    if block_heads is None:
      block_heads = max(d for d in range(1, min(8, heads_per_group) + 1) if heads_per_group % d == 0)
    elif heads_per_group % block_heads:
      raise ValueError(
          f"SsdTpuBlockSizes.block_heads = {block_heads} must divide the heads per group nheads / ngroups = "
          f"{nheads} / {ngroups} = {heads_per_group}, so that one grid step reads one B/C group"
      )
    return dataclasses.replace(self, block_heads=block_heads)


@dataclasses.dataclass(frozen=True)
class SsdGpuBlockSizes:
  """Triton (GPU) kernel settings. One program handles one (batch, head) pair and loops over the chunks, carrying
  the [P, N] state in registers, so there is no sequence block to choose.

  Attributes:
    num_warps: warps per program (Triton's `num_warps`).
    num_stages: software-pipelining depth of the chunk loop (Triton's `num_stages`).
  """

  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    common.check_positive_int("SsdGpuBlockSizes.num_warps", self.num_warps)
    common.check_positive_int("SsdGpuBlockSizes.num_stages", self.num_stages)
    if self.num_warps & (self.num_warps - 1):
      raise ValueError(f"SsdGpuBlockSizes.num_warps must be a power of two, got {self.num_warps}")

  def resolve(self, nheads: int, ngroups: int) -> SsdGpuBlockSizes:
    del nheads, ngroups
    return self


def default_block_sizes(platform: str) -> SsdTpuBlockSizes | SsdGpuBlockSizes:
  """The default (unresolved) block sizes of the "tpu" or "gpu" kernel."""
  if platform == "tpu":
    return SsdTpuBlockSizes()
  if platform == "gpu":
    return SsdGpuBlockSizes()
  raise ValueError(f"platform must be 'tpu' or 'gpu', got {platform!r}")


def kernel_chunk_length(platform: str, chunk: int, itemsize: int) -> int:
  """The chunk length a kernel runs: `chunk` padded to what the backend tiles.

  TPU: a multiple of the sublane tile of the input dtype (8 rows of 32-bit, 16 of 16-bit, 32 of 8-bit values), so
  that [Q, P] and [Q, N] blocks are tile-aligned. GPU (Triton): a power of two >= 16, as `tl.dot` requires.
  """
  if platform == "tpu":
    return common.round_up(chunk, 8 * max(1, 4 // itemsize))
  if platform == "gpu":
    return max(16, common.next_power_of_2(chunk))
  raise ValueError(f"platform must be 'tpu' or 'gpu', got {platform!r}")
