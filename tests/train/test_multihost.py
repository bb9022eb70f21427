"""Multi-host: two processes on localhost (jax.distributed over gloo, 4 CPU devices each) train 3 steps and match one
process with 8 devices. Tolerance: relative 1e-5 (the cross-process all-reduce sums in a different order)."""

import socket
import subprocess

import numpy as np
import pytest

from ssmjax.train.metrics import read_metrics
from tiny_run import subprocess_env, train_py_command

FLAGS = ["--gin.NUM_STEPS=3", "--gin.CHECKPOINT_EVERY=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  # Given the losses of one process over 8 devices,
  single = tmp_path / "single"
  subprocess.run(train_py_command(single, *FLAGS), env=subprocess_env(tmp_path / "cache1", devices=8), check=True,
                 capture_output=True, timeout=600)
  # when two processes with 4 devices each train the same run together (each reading its half of every batch),
  multi = tmp_path / "multi"
  port = _free_port()
  processes = [subprocess.Popen(
      train_py_command(multi, *FLAGS, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                       f"--process_id={i}"), env=subprocess_env(tmp_path / f"cache_p{i}", devices=4),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs
  # then the losses match, and both processes took part in the checkpoints.
  single_losses = [m["loss"] for m in read_metrics(str(single))]
  multi_losses = [m["loss"] for m in read_metrics(str(multi))]
  assert len(multi_losses) == 3
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  assert sorted((multi / "checkpoints").iterdir())[-1].name == "3"
  assert {p.name for p in (multi / "checkpoints" / "3" / "data").iterdir()} >= {"process_0-of-2.json",
                                                                              "process_1-of-2.json"}
