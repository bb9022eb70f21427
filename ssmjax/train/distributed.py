"""Starting JAX's multi-process runtime: explicit settings, or detected from the environment on clusters.

``jax.distributed.initialize`` must run before anything touches the devices. With a coordinator address it uses the
given process count and id (e.g. 2 processes on localhost); without one, jax detects TPU pods (the TPU metadata),
SLURM (``SLURM_JOB_ID`` etc.), Open MPI and Kubernetes jobs itself, which `initialize` only asks it to do when the
environment shows such a cluster, so a plain single-machine run stays single-process. CPU processes exchange data
through gloo collectives (``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

MODES = ("auto", "on", "off")
@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """``mode``: "auto" (initialize when given a coordinator or on a detected cluster), "on" (always), "off"."""

  mode: str = "auto"
  coordinator_address: str | None = None  # host:port of process 0.
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"distributed mode must be one of {MODES}, got {self.mode!r}")
    if self.coordinator_address is not None and (self.num_processes is None or self.process_id is None):
      raise ValueError("a coordinator address needs num_processes and process_id too (or none of the three, to "
                       "detect them on a cluster)")
    if self.num_processes is not None and self.process_id is not None and not (
        0 <= self.process_id < self.num_processes):
      raise ValueError(f"process_id must be in [0, num_processes={self.num_processes}), got {self.process_id}")


def detected_cluster(environ=os.environ) -> str | None:
  """The kind of multi-process job the environment shows, or None (TPU pods on Cloud TPU VMs may show nothing in
  the environment: pass ``mode="on"`` there and jax reads the TPU metadata)."""
  if int(environ.get("SLURM_NTASKS") or 1) > 1:
    return "SLURM"
  if int(environ.get("OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "Open MPI"
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "a TPU pod"
  if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "a multi-slice TPU job"
  return None


def initialize(config: DistributedConfig = DistributedConfig()) -> bool:
  """Starts the multi-process runtime when ``config`` asks for it; returns whether it did."""
  if config.mode == "off":
    return False
  explicit = config.coordinator_address is not None
  cluster = detected_cluster()
  if config.mode == "auto" and not explicit and cluster is None:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by CPU devices.
  logging.info("jax.distributed.initialize: %s", f"coordinator {config.coordinator_address}, process "
               f"{config.process_id} of {config.num_processes}" if explicit else f"detected {cluster or 'cluster'}")
  jax.distributed.initialize(coordinator_address=config.coordinator_address, num_processes=config.num_processes,
                             process_id=config.process_id,
                             local_device_ids=list(config.local_device_ids) if config.local_device_ids else None)
  return True
