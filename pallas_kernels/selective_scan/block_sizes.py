"""Block sizes of the selective-scan Pallas kernels: one frozen dataclass per backend, with validated defaults."""

from __future__ import annotations

import dataclasses

from pallas_kernels import common

__all__ = ["ScanGpuBlockSizes", "ScanTpuBlockSizes", "default_block_sizes"]

# The TPU backward keeps the states of one time block in VMEM ([block_time, N, block_channels] float32); the default
# block_time keeps that buffer at or under this size.
_TPU_STATE_BUFFER_BYTES = 4 * 2**20


@dataclasses.dataclass(frozen=True)
class ScanTpuBlockSizes:
  """Mosaic (TPU) kernel block sizes.

  Attributes:
    block_channels: channels (d_inner) per grid step, a multiple of 128 (the lane width). None: min(512, d_inner
      rounded up to 128). d_inner is zero-padded to a multiple of it.
    block_time: time steps per grid step, a multiple of 8 (the sublane tile). None: the largest multiple of 8 up to
      128 whose backward state buffer (block_time * N * block_channels * 4 bytes) fits in 4 MiB, and no longer
      than the (padded) sequence.
    vmem_limit_bytes: Mosaic's scoped VMEM limit for the kernels; None keeps the compiler default.
  """

  block_channels: int | None = None
  block_time: int | None = None
  vmem_limit_bytes: int | None = None

  def __post_init__(self):
    for name in ("block_channels", "block_time", "vmem_limit_bytes"):
      if getattr(self, name) is not None:
        common.check_positive_int(f"ScanTpuBlockSizes.{name}", getattr(self, name))
    if self.block_channels is not None and self.block_channels % 128:
      raise ValueError(f"ScanTpuBlockSizes.block_channels must be a multiple of 128, got {self.block_channels}")
    if self.block_time is not None and self.block_time % 8:
      raise ValueError(f"ScanTpuBlockSizes.block_time must be a multiple of 8, got {self.block_time}")

  def resolve(self, seqlen: int, d_inner: int, dstate: int) -> ScanTpuBlockSizes:
    """These block sizes with None replaced by the default for the shapes."""
    block_channels = self.block_channels or min(512, common.round_up(d_inner, 128))
    block_time = self.block_time
    if block_time is None:
      fits = _TPU_STATE_BUFFER_BYTES // (4 * dstate * block_channels) // 8 * 8
      block_time = max(8, min(128, fits, common.round_up(seqlen, 8)))
    return dataclasses.replace(self, block_channels=block_channels, block_time=block_time)


@dataclasses.dataclass(frozen=True)
class ScanGpuBlockSizes:
  """Triton (GPU) kernel settings. One program handles one sequence and `block_channels` channels and loops over
  time, carrying the [N, block_channels] state in registers.

  Attributes:
    block_channels: channels per program, a power of two. d_inner is zero-padded to a multiple of it.
    block_time: time steps whose states the backward program recomputes (and keeps in a global-memory workspace)
      before walking them in reverse; the forward saves the state at every multiple of it.
    num_warps, num_stages: Triton's.
  """

  block_channels: int = 64
  block_time: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_channels", "block_time", "num_warps", "num_stages"):
      common.check_positive_int(f"ScanGpuBlockSizes.{name}", getattr(self, name))
    for name in ("block_channels", "num_warps"):
      value = getattr(self, name)
      if value & (value - 1):
        raise ValueError(f"ScanGpuBlockSizes.{name} must be a power of two, got {value}")

  def resolve(self, seqlen: int, d_inner: int, dstate: int) -> ScanGpuBlockSizes:
    del d_inner, dstate
    return dataclasses.replace(self, block_time=min(self.block_time, seqlen))


def default_block_sizes(platform: str) -> ScanTpuBlockSizes | ScanGpuBlockSizes:
  """The default (unresolved) block sizes of the "tpu" or "gpu" kernel."""
  if platform == "tpu":
    return ScanTpuBlockSizes()
  if platform == "gpu":
    return ScanGpuBlockSizes()
  raise ValueError(f"platform must be 'tpu' or 'gpu', got {platform!r}")
