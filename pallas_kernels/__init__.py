"""Sequence-mixing ops for ssmjax: one public entry point per op, each with a pure-jnp reference.

`ssd` is the Mamba-2 SSD scan, `selective_scan` the Mamba-1 selective scan. Each takes `implementation=None`
(best for the backend: the Pallas kernels on TPU and GPU, jnp on CPU) or a name from
`pallas_kernels.ssd.IMPLEMENTATIONS` / `pallas_kernels.selective_scan.IMPLEMENTATIONS`. `ssd_sharded` and
`selective_scan_sharded` run them inside `shard_map` on a device mesh (`pallas_kernels.sharding`).
"""

from pallas_kernels.selective_scan import selective_scan
from pallas_kernels.sharding import selective_scan_sharded, ssd_sharded
from pallas_kernels.ssd import ssd

__all__ = ["selective_scan", "selective_scan_sharded", "ssd", "ssd_sharded"]
