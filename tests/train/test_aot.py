"""Ahead-of-time compilation of the train step for a TPU slice (v5e:2x2) on this CPU machine, through libtpu."""

import subprocess

import pytest

from ssmjax.sharding import MeshConfig
from ssmjax.train import train
from tiny_run import DATA, MODEL, subprocess_env, train_config, train_py_command

pytest.importorskip("libtpu", reason="needs libtpu: pip install -e '.[tpu]'")
pytestmark = pytest.mark.tpu


def test_compile_for_v5e_2x2():
  result = train(MODEL, DATA, train_config(), MeshConfig(data=2, fsdp=1, tensor=2), compile_only="v5e:2x2")
  report = result.compile_report
  assert result.state is None and report["num_devices"] == 4 and "v5" in report["device_kind"].lower()
  assert {axis: size for axis, size in report["mesh"].items() if size > 1} == {"data": 2, "tensor": 2}
  # The Mamba-2 layer runs the Mosaic SSD kernels (forward and backward), as a TPU would by default, inside shard_map.
  assert report["mosaic_kernel_calls"] >= 2
  memory = report["memory_per_device"]
  assert memory["argument"] > 0 and memory["temp"] >= 0 and memory["peak_estimate"] >= memory["argument"]
  # the donated state aliases the updated state: about the state's size is saved.
  assert memory["alias"] > 0
  assert report["cost_per_device"]["flops"] > 0


def test_unknown_topology_is_a_clear_error():
  with pytest.raises(ValueError, match="cannot describe TPU topology 'v99:1x1'"):
    train(MODEL, DATA, train_config(), compile_only="v99:1x1")


@pytest.mark.slow
def test_train_py_compile_only_prints_the_analysis(tmp_path):
  result = subprocess.run(train_py_command(tmp_path, "--compile_only", "--topology=v5e:2x2"),
                          env=subprocess_env(tmp_path / "cache"), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "compiled the train step for v5e:2x2" in result.stdout and "peak_estimate" in result.stdout
