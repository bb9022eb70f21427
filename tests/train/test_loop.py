"""The run's outputs: metrics (JSONL and TensorBoard), the exported model, the evaluation; train.py's flags."""

import dataclasses
import glob
import os
import subprocess

import jax
import numpy as np
import pytest

from ssmjax import checkpoint as model_checkpoint
from ssmjax.data import PhonebookTask
from ssmjax.train import tensorboard, train
from ssmjax.train.metrics import read_metrics
from tiny_run import DATA, MODEL, subprocess_env, train_config, train_py_command

PHONEBOOK = dataclasses.replace(DATA, tasks=("phonebook",),
                                phonebook=PhonebookTask(min_book_size=1, max_book_size=2, num_queries=1))


def test_run_writes_metrics_exports_the_model_and_evaluates(tmp_path):
  config = train_config(4, log_every=2, tensorboard=True, export_model=True, eval_examples=8, eval_batch_size=8)
  result = train(MODEL, PHONEBOOK, config, workdir=str(tmp_path))
  # metrics: steps 1 (the first) and every log_every steps, with throughput after the first record.
  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 4]
  assert {"loss", "grad_norm", "lr", "accuracy", "tokens"} <= set(records[0])
  assert records[-1]["tokens_per_s"] > 0 and records[-1]["mfu"] is None  # no peak FLOPs known for a CPU.
  assert records[1]["lr"] == pytest.approx(1e-2 * 1 / 2)  # warmup: the LR of step 2 is schedule(1).
  # TensorBoard: the same scalars.
  (event_file,) = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  scalars = {(step, tag): value for step, tag, value in tensorboard.read_scalars(event_file)}
  assert scalars[(4, "loss")] == pytest.approx(records[-1]["loss"], rel=1e-6)
  # the exported model loads with ssmjax.checkpoint.load_model and holds the final parameters.
  config_back, params = model_checkpoint.load_model(result.model_dir)
  assert config_back == MODEL
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert 0.0 <= result.phonebook_accuracy <= 1.0


def test_tensorboard_records_are_valid():
  assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  record = tensorboard.tfrecord(b"payload")
  assert len(record) == 8 + 4 + 7 + 4


@pytest.mark.slow
def test_train_py_shorthand_and_operative_config(tmp_path):
  result = subprocess.run(train_py_command(tmp_path, "--gin.NUM_STEPS=3", "--gin.LEARNING_RATE=0.005"),
                          env=subprocess_env(tmp_path / "cache"), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"train checkpoints: {tmp_path}/checkpoints" in result.stdout
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]
  operative = (tmp_path / "config.gin").read_text()
  assert "LEARNING_RATE = 0.005" in operative and "NUM_STEPS = 3" in operative, operative
