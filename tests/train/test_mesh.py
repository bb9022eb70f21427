"""Sharded training gives the losses of one device: meshes (8,1,1), (1,8,1), (2,2,2), (1,2,4) on 8 CPU devices.

Tolerance: relative 2e-5 on each of the 5 losses. The meshes change only how XLA splits and sums the work (reduction
order), so the losses agree to float32 rounding (observed differences are ~1e-7 relative).
"""

import jax
import numpy as np
import pytest

from ssmjax.sharding import MeshConfig
from ssmjax.train import train

from tiny_run import DATA, MODEL, train_config

RTOL = 2e-5


@pytest.fixture(scope="module")
def single_device_losses(tmp_path_factory):
  result = train(MODEL, DATA, train_config(), MeshConfig(1, 1, 1), workdir=str(tmp_path_factory.mktemp("single")),
                 devices=jax.devices()[:1])
  return [m["loss"] for m in result.metrics]


@pytest.mark.parametrize("shape", [
    pytest.param((8, 1, 1), marks=pytest.mark.slow),
    pytest.param((1, 8, 1), marks=pytest.mark.slow),
    (2, 2, 2),
    pytest.param((1, 2, 4), marks=pytest.mark.slow),
], ids=lambda s: "x".join(map(str, s)))
def test_mesh_gives_single_device_losses(shape, single_device_losses, tmp_path):
  result = train(MODEL, DATA, train_config(), MeshConfig(*shape), workdir=str(tmp_path))
  losses = [m["loss"] for m in result.metrics]
  assert len(losses) == 5 and losses[-1] < losses[0]
  np.testing.assert_allclose(losses, single_device_losses, rtol=RTOL)
  in_proj = result.state.params["layers_0"]["mixer"]["in_proj"]
  assert in_proj.sharding.mesh.shape == {"data": shape[0], "fsdp": shape[1], "context": 1, "tensor": shape[2]}
