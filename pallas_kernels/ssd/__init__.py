"""Mamba-2 SSD: the public `ssd` entry point, its pure-jnp implementations and its Pallas kernels' block sizes.

Modules: `api` (the entry point), `reference` (the oracle and the chunked jnp algorithm), `chunk_math` (one chunk's
math, shared by the kernels), `pallas_tpu` / `pallas_gpu` (the kernels), `pallas` (their `custom_vjp`),
`block_sizes`, `cost` (FLOP counts).
"""

from pallas_kernels.ssd.api import IMPLEMENTATIONS, ssd
from pallas_kernels.ssd.block_sizes import SsdGpuBlockSizes, SsdTpuBlockSizes
from pallas_kernels.ssd.reference import ssd_chunked, ssd_reference

__all__ = ["IMPLEMENTATIONS", "SsdGpuBlockSizes", "SsdTpuBlockSizes", "ssd", "ssd_chunked", "ssd_reference"]
