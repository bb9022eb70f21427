"""Starting a run from another run's parameters (`TrainConfig.init_from`, `ssmjax.train.init_from`)."""

import dataclasses

import jax
import numpy as np
import pytest

from ssmjax import data as data_lib
from ssmjax.models import LanguageModel
from ssmjax.sharding import MeshConfig, make_mesh
from ssmjax.train import init_from, train
from ssmjax.train.state import state_shardings
from ssmjax.train.step import loss_sums
from tiny_run import DATA, MODEL, OPTIMIZER, train_config

MESH = MeshConfig(data=2, fsdp=2, tensor=2)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A tiny run of 2 steps that saved a train checkpoint and exported its model."""
  workdir = tmp_path_factory.mktemp("source")
  result = train(MODEL, DATA, train_config(2, export_model=True), MESH, workdir=str(workdir))
  return workdir, jax.device_get(result.state.params)


def _param_shardings(model):
  from ssmjax.train.optim import make_optimizer

  optimizer, _ = make_optimizer(OPTIMIZER, 6)
  mesh = make_mesh(MESH)
  return state_shardings(model, optimizer, mesh, MESH.resolved_rules()).params


@pytest.mark.parametrize("where", ["workdir", "checkpoints", "checkpoints/2", "model"])
def test_load_params_from_each_kind_of_source(source_run, where):
  # Given a finished run, when its workdir, checkpoints directory, one step or exported model is named,
  # then the parameters restored (in the new run's shardings; another dtype allowed) are the run's final ones.
  workdir, params = source_run
  path = workdir if where == "workdir" else workdir / where
  model = MODEL.replace(dtype="bfloat16", remat_policy="full")  # same shapes, other settings.
  shardings = _param_shardings(model)
  loaded = init_from.load_params(str(path), model, shardings)
  expected_kind = "model" if where == "model" else "checkpoint"
  assert init_from.resolve_source(str(path))[0] == expected_kind
  for (p, a), b, s in zip(jax.tree_util.tree_flatten_with_path(loaded)[0], jax.tree_util.tree_leaves(params),
                          jax.tree_util.tree_leaves(shardings)):
    np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(p))
    assert a.sharding == s, jax.tree_util.keystr(p)


def test_run_starts_from_the_source_parameters(source_run, tmp_path):
  # Given init_from, a fresh run's first loss is the source parameters' loss on the first batch, at step 0 with a
  # fresh optimizer; the run then trains and saves its own checkpoints, from which a rerun resumes.
  workdir, params = source_run
  config = train_config(1, init_from=str(workdir))
  result = train(MODEL, DATA, config, MESH, workdir=str(tmp_path))
  assert result.start_step == 0 and result.step == 1
  iterator = data_lib.make_train_iterator(DATA, process_index=0, process_count=1)
  batch = next(iterator)
  iterator.close()
  loss_sum, aux = jax.jit(lambda p, b: loss_sums(p, LanguageModel(MODEL), b))(params, batch)
  np.testing.assert_allclose(result.metrics[0]["loss"], float(loss_sum / aux["weight"]), rtol=1e-5)
  fresh = train(MODEL, DATA, train_config(1), MESH, workdir=str(tmp_path / "fresh"))
  assert abs(fresh.metrics[0]["loss"] - result.metrics[0]["loss"]) > 1e-3
  # a second call resumes from its own checkpoint (step 1), not from init_from.
  resumed = train(MODEL, DATA, dataclasses.replace(config, num_steps=2), MESH, workdir=str(tmp_path))
  assert resumed.start_step == 1 and resumed.step == 2


def test_mismatched_shapes_and_missing_sources_are_clear_errors(source_run, tmp_path):
  workdir, _ = source_run
  wider = MODEL.replace(d_model=64)
  with pytest.raises(ValueError, match=r"do not fit the model: .*\['embed'\]\['embedding'\]: shape \(512, 32\) in the "
                                       r"source, \(512, 64\) in the model"):
    init_from.load_params(str(workdir / "model"), wider, _param_shardings(wider))
  deeper = MODEL.replace(pattern="M*--")
  with pytest.raises(ValueError, match=r"\['layers_3'\]\['mlp'\].*: missing"):
    init_from.load_params(str(workdir), deeper, _param_shardings(deeper))
  with pytest.raises(FileNotFoundError, match="holds no parameters"):
    init_from.load_params(str(tmp_path), MODEL, _param_shardings(MODEL))
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    init_from.resolve_source(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="init_from must be a non-empty path"):
    train_config(1, init_from="")
