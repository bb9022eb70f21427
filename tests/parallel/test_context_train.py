"""Training with a context axis: `ssmjax.train.train` on a (data 2, context 4) mesh gives the losses of one device.

The tiny hybrid run of tests/train (pattern ``M*-``, sequences of 32 tokens: 8 per context device, the Mamba-2 chunk)
loads its batches with the length sharded over ``context`` (`ssmjax.sharding.batch_spec`) and runs the context-parallel
scan, conv and attention. Tolerance: relative 2e-5 on each of the 5 losses, as tests/train/test_mesh.py (the
context-parallel ops reorder float32 sums; observed ~1e-7).
"""

import os
import sys

import jax
import numpy as np
import pytest

from ssmjax.sharding import MeshConfig
from ssmjax.train import train
from ssmjax.train.loop import check_run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "train"))
from tiny_run import DATA, MODEL, train_config  # noqa: E402


def test_a_context_axis_that_does_not_divide_the_sequence_is_an_error():
  rules = MeshConfig(context=3).resolved_rules()
  with pytest.raises(ValueError, match=r"seq_len \(32\) must be divisible by the mesh axes \('context',\)"):
    check_run(MODEL, DATA, train_config(), (1, 1, 3, 1), rules, process_count=1)


@pytest.mark.slow
def test_context_parallel_training_gives_single_device_losses(tmp_path):
  single = train(MODEL, DATA, train_config(), MeshConfig(1, 1, 1), workdir=str(tmp_path / "single"),
                 devices=jax.devices()[:1])
  result = train(MODEL, DATA, train_config(), MeshConfig(data=2, context=4), workdir=str(tmp_path / "context"))
  losses = [m["loss"] for m in result.metrics]
  assert len(losses) == 5 and losses[-1] < losses[0]
  np.testing.assert_allclose(losses, [m["loss"] for m in single.metrics], rtol=2e-5)
  assert result.state.params["layers_0"]["mixer"]["in_proj"].sharding.mesh.shape["context"] == 4
