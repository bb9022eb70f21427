"""Mamba-1 selective scan: the public `selective_scan` entry point and its pure-jnp implementations."""

from pallas_kernels.selective_scan.api import IMPLEMENTATIONS, selective_scan
from pallas_kernels.selective_scan.reference import selective_scan_associative, selective_scan_reference

__all__ = ["IMPLEMENTATIONS", "selective_scan", "selective_scan_associative", "selective_scan_reference"]
