"""Mamba-1 selective scan: the public `selective_scan` entry point, its pure-jnp implementations and its Pallas
kernels' block sizes.

Modules: `api` (the entry point), `reference` (the oracle and the associative-scan jnp version), `scan_math` (one
time step's math, shared by the kernels), `pallas_tpu` / `pallas_gpu` (the kernels), `pallas` (their `custom_vjp`),
`block_sizes`.
"""

from pallas_kernels.selective_scan.api import IMPLEMENTATIONS, selective_scan
from pallas_kernels.selective_scan.block_sizes import ScanGpuBlockSizes, ScanTpuBlockSizes
from pallas_kernels.selective_scan.reference import selective_scan_associative, selective_scan_reference

__all__ = ["IMPLEMENTATIONS", "ScanGpuBlockSizes", "ScanTpuBlockSizes", "selective_scan", "selective_scan_associative",
           "selective_scan_reference"]
