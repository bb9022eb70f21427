"""Mamba-2 SSD: the public `ssd` entry point and its pure-jnp implementations."""

from pallas_kernels.ssd.api import IMPLEMENTATIONS, ssd
from pallas_kernels.ssd.reference import ssd_chunked, ssd_reference

__all__ = ["IMPLEMENTATIONS", "ssd", "ssd_chunked", "ssd_reference"]
