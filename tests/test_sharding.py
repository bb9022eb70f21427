"""Meshes from config (-1 fill, errors), rules, and the golden parameter sharding of a tiny preset on a 2x2x2 mesh.

The golden table (tests/fixtures/sharding/tiny_hybrid_2x2x2.json) lists every parameter's mesh axes under the default
rules. Regenerate it after a deliberate change of names or rules with
``python tests/test_sharding.py --write`` and review the diff.
"""

import json
import os
import sys

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ssmjax import presets
from ssmjax.sharding import (DEFAULT_RULES, MeshConfig, check_divisible, logical_to_sharding, make_mesh,
                             resolve_mesh_shape)

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "sharding", "tiny_hybrid_2x2x2.json")


@pytest.mark.parametrize("shape, devices, expected", [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((1, -1, 1), 8, (1, 8, 1)),
    ((2, -1, 2), 8, (2, 2, 2)),
    ((1, 2, 4), 8, (1, 2, 4)),
    ((-1, 1, 1), 1, (1, 1, 1)),
])
def test_resolve_mesh_shape(shape, devices, expected):
  assert resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize("shape, devices, match", [
    ((2, 2, 1), 8, "has 4 devices but there are 8"),
    ((3, -1, 1), 8, "multiple of 3"),
    ((-1, -1, 1), 8, "at most one axis"),
    ((0, 1, 1), 8, "positive or -1"),
])
def test_mesh_that_does_not_match_the_devices_is_an_error(shape, devices, match):
  with pytest.raises(ValueError, match=match):
    resolve_mesh_shape(shape, devices)


def test_make_mesh_uses_all_devices_with_fill():
  mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  with pytest.raises(ValueError, match="does not match the device count"):
    make_mesh(MeshConfig(data=3, fsdp=-1))


def test_rules_from_config():
  assert MeshConfig().resolved_rules() == DEFAULT_RULES
  rules = dict(MeshConfig(rule_overrides=(("embed", None), ("activation_batch", ["data"]))).resolved_rules())
  assert rules["embed"] is None and rules["activation_batch"] == ("data",) and rules["vocab"] == "tensor"
  with pytest.raises(ValueError, match="unknown logical axis names \\['embedd'\\]"):
    MeshConfig(rule_overrides=(("embedd", None),)).resolved_rules()
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    MeshConfig(rule_overrides=(("embed", "model"),)).resolved_rules()
  with pytest.raises(ValueError, match="more than one rule"):
    MeshConfig(rule_overrides=(("embed", None), ("embed", "fsdp"))).resolved_rules()


def test_check_divisible_names_the_parameter():
  mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
  abstract = {"layer": {"kernel": jax.ShapeDtypeStruct((6, 8), "float32")}}
  shardings = {"layer": {"kernel": NamedSharding(mesh, PartitionSpec("tensor", "fsdp"))}}
  with pytest.raises(ValueError, match=r"\['layer'\]\['kernel'\]: dimension 0 has size 6, not divisible by the 4"):
    check_divisible(abstract, shardings)


def _sharding_table(state_or_specs) -> dict:
  return {jax.tree_util.keystr(path): [None if a is None else (list(a) if isinstance(a, tuple) else a)
                                       for a in tuple(spec)]
          for path, spec in jax.tree_util.tree_leaves_with_path(
              state_or_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))}


def _golden_config():
  return presets.get("tiny_hybrid"), MeshConfig(data=2, fsdp=2, tensor=2)


def _param_mesh_specs():
  from ssmjax.train.state import param_logical_specs

  model, mesh_config = _golden_config()
  mesh = make_mesh(mesh_config)
  shardings = logical_to_sharding(param_logical_specs(model), mesh, mesh_config.resolved_rules())
  return jax.tree_util.tree_map(lambda s: s.spec, shardings, is_leaf=lambda x: isinstance(x, NamedSharding))


def test_golden_param_sharding():
  with open(GOLDEN) as f:
    golden = json.load(f)
  assert _sharding_table(_param_mesh_specs()) == golden["params"]


@pytest.mark.slow
def test_initialised_state_is_sharded_as_the_golden_table():
  import flax.linen as nn

  from ssmjax.train.optim import OptimizerConfig, make_optimizer
  from ssmjax.train.state import create_state, state_shardings

  with open(GOLDEN) as f:
    golden = json.load(f)["params"]
  model, mesh_config = _golden_config()
  mesh, rules = make_mesh(mesh_config), mesh_config.resolved_rules()
  optimizer, _ = make_optimizer(OptimizerConfig(), 10)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    state = create_state(model, optimizer, state_shardings(model, optimizer, mesh, rules), seed=0)
  actual = jax.tree_util.tree_map(lambda a: a.sharding.spec, state.params)
  table = _sharding_table(actual)
  for path, axes in golden.items():  # jax may drop trailing Nones of a spec; the table has one entry per dimension.
    assert table[path] == axes[:len(table[path])] and all(a is None for a in axes[len(table[path]):]), path
  # Adam's moments are sharded like their parameters.
  mu = state.opt_state[1][0].mu
  assert mu["layers_0"]["mixer"]["in_proj"].sharding.spec == state.params["layers_0"]["mixer"]["in_proj"].sharding.spec


if __name__ == "__main__" and "--write" in sys.argv:
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
  with open(GOLDEN, "w") as f:
    json.dump({"preset": "tiny_hybrid", "mesh": {"data": 2, "fsdp": 2, "tensor": 2}, "rules": "DEFAULT_RULES",
               "params": _sharding_table(_param_mesh_specs())}, f, indent=1, sort_keys=True)
    f.write("\n")
  print(f"wrote {GOLDEN}")
