"""Checkpoints: exact resume, half-written checkpoints ignored, SIGTERM saves and a restart continues exactly."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from ssmjax.train import CheckpointConfig, train
from ssmjax.train.checkpointing import UNREADABLE_SUFFIX
from ssmjax.train.metrics import read_metrics
from tiny_run import DATA, MODEL, OPTIMIZER, subprocess_env, train_config, train_py_command

# tiny_run's OPTIMIZER has a fixed schedule length, so that runs of 3 and of 6 steps use the same learning rates.


def _losses(metrics):
  return {m["step"]: m["loss"] for m in metrics}


def test_resume_is_exact_and_half_written_checkpoints_are_ignored(tmp_path):
  config = train_config(6, optimizer=OPTIMIZER, checkpoint=CheckpointConfig(every_steps=2, keep=2))
  # Given an uninterrupted 6-step run,
  full = train(MODEL, DATA, config, workdir=str(tmp_path / "full"))
  # and a run stopped after 3 steps (its last checkpoint: step 3; every 2 steps: step 2, kept 2),
  part = str(tmp_path / "part")
  first = train(MODEL, DATA, train_config(3, optimizer=OPTIMIZER, checkpoint=config.checkpoint), workdir=part)
  checkpoints = os.path.join(part, "checkpoints")
  assert sorted(os.listdir(checkpoints)) == ["2", "3"] and first.step == 3
  # with what a crash mid-save leaves behind: orbax's temporary directory of a later step (never renamed into
  # place), and a step directory whose contents are missing (copied by hand, a full disk),
  shutil.copytree(os.path.join(checkpoints, "3"), os.path.join(checkpoints, "5.orbax-checkpoint-tmp-1234"))
  shutil.copytree(os.path.join(checkpoints, "3"), os.path.join(checkpoints, "4"))
  shutil.rmtree(os.path.join(checkpoints, "4", "state"))
  # when the run is started again,
  resumed = train(MODEL, DATA, config, workdir=part)
  # then it resumed from step 3 (the broken step 4 set aside, the temporary directory ignored) and its losses are
  # exactly those of the uninterrupted run.
  assert [m["step"] for m in resumed.metrics] == [4, 5, 6]
  assert os.path.isdir(os.path.join(checkpoints, "4" + UNREADABLE_SUFFIX))
  assert _losses(first.metrics) == {s: l for s, l in _losses(full.metrics).items() if s <= 3}
  assert _losses(resumed.metrics) == {s: l for s, l in _losses(full.metrics).items() if s > 3}
  assert _losses(read_metrics(part)) == _losses(full.metrics)


@pytest.mark.slow
def test_sigterm_saves_and_restart_continues_exactly(tmp_path):
  env = subprocess_env(tmp_path / "jax_cache")
  flags = ["--gin.NUM_STEPS=40", "--gin.CHECKPOINT_EVERY=10", "--gin.ssmjax.OptimizerConfig.decay_steps=40"]
  # Given an uninterrupted run of 40 steps,
  subprocess.run(train_py_command(tmp_path / "full", *flags), env=env, check=True, capture_output=True, timeout=600)
  full = _losses(read_metrics(str(tmp_path / "full")))
  # when the same run in another directory gets SIGTERM after a few steps,
  workdir = tmp_path / "interrupted"
  process = subprocess.Popen(train_py_command(workdir, *flags), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  metrics_file = workdir / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and process.poll() is None:
    if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
      break
    time.sleep(0.02)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=300)
  # then it saved a checkpoint at the step it stopped and exited with 128 + SIGTERM,
  assert process.returncode == 143, output
  stopped = max(int(json.loads(line)["step"]) for line in metrics_file.read_text().splitlines())
  assert stopped < 40, "the run finished before SIGTERM arrived"
  assert str(stopped) in os.listdir(workdir / "checkpoints"), output
  assert f"stopped by SIGTERM at step {stopped}" in output
  # and running it again continues with exactly the losses of the uninterrupted run.
  subprocess.run(train_py_command(workdir, *flags), env=env, check=True, capture_output=True, timeout=600)
  assert _losses(read_metrics(str(workdir))) == full
