"""Sequence-mixing ops for ssmjax: one public entry point per op, each with a pure-jnp reference.

`ssd` is the Mamba-2 SSD scan, `selective_scan` the Mamba-1 selective scan. Each takes `implementation=None`
(best for the backend) or a name from `pallas_kernels.ssd.IMPLEMENTATIONS` /
`pallas_kernels.selective_scan.IMPLEMENTATIONS`.
"""

from pallas_kernels.selective_scan import selective_scan
from pallas_kernels.ssd import ssd

__all__ = ["selective_scan", "ssd"]
