"""Multi-process settings: what the environment shows, and which settings are inconsistent."""

import pytest

from ssmjax.train import distributed


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "16"}, "SLURM"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, None),  # one TPU VM host
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, "a TPU pod"),
])
def test_detected_cluster(environ, expected):
  assert distributed.detected_cluster(environ) == expected


@pytest.mark.parametrize("settings, match", [
    (dict(mode="sometimes"), "mode"),
    (dict(coordinator_address="localhost:1234"), "needs num_processes and process_id"),
    (dict(coordinator_address="localhost:1234", num_processes=2, process_id=2), r"process_id must be in \[0, "),
])
def test_inconsistent_settings(settings, match):
  with pytest.raises(ValueError, match=match):
    distributed.DistributedConfig(**settings)


def test_single_machine_run_stays_single_process(monkeypatch):
  for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(variable, raising=False)
  assert distributed.initialize(distributed.DistributedConfig()) is False
  assert distributed.initialize(distributed.DistributedConfig(mode="off", coordinator_address="x:1", num_processes=2,
                                                              process_id=0)) is False
