"""Gin: every file under configs/ parses, model files build exactly their presets, and errors name what is wrong."""

import dataclasses
import glob
import importlib
import math
import os

import gin
import pytest

from ssmjax import gin_utils
from ssmjax import presets
from ssmjax.config import Mamba2Config, ModelConfig

CONFIGS = gin_utils.CONFIGS_DIR
GIN_FILES = sorted(os.path.relpath(path, CONFIGS) for path in glob.glob(os.path.join(CONFIGS, "**", "*.gin"),
                                                                         recursive=True))
MODEL_FILES = [path for path in GIN_FILES if path.startswith("models" + os.sep)]


def _preset_name(path: str) -> str:
  return os.path.basename(path)[:-len(".gin")]


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("path", GIN_FILES)
def test_gin_file_parses(path):
  gin_utils.parse([path], finalize=False)


@pytest.mark.parametrize("path", MODEL_FILES)
def test_model_gin_file_builds_its_preset(path):
  config = gin_utils.model_config_from_gin([path])
  name = _preset_name(path)
  if name in presets.names():
    assert config == presets.get(name)
  assert type(config) is ModelConfig  # gin hands back the library's class, not its wrapper.


def test_every_preset_has_a_model_gin_file():
  missing = set(presets.names()) - {_preset_name(path) for path in MODEL_FILES}
  assert not missing, f"run scripts/write_model_gins.py: no configs/models/<name>.gin for {sorted(missing)}"


@pytest.mark.parametrize("binding, expected", [
    ("D_MODEL = 128", dict(d_model=128)),
    ("ssmjax.ModelConfig.d_model = 128", dict(d_model=128)),
    ("ssmjax.ModelConfig.dtype = 'bfloat16'", dict(dtype="bfloat16")),
    ("ssmjax.Mamba2Config.chunk_size = 64", dict(mamba2=dataclasses.replace(presets.get("tiny_mamba2").mamba2,
                                                                              chunk_size=64))),
])
def test_bindings_override_model_file(binding, expected):
  config = gin_utils.model_config_from_gin(["models/tiny_mamba2.gin"], [binding])
  assert config == presets.get("tiny_mamba2").replace(**expected)


def test_repeated_calls_start_from_a_clear_config():
  gin_utils.model_config_from_gin(["models/tiny_mamba2.gin"], ["D_MODEL = 128"])
  assert gin_utils.model_config_from_gin(["models/tiny_mamba2.gin"]) == presets.get("tiny_mamba2")


def test_unknown_binding_is_named_in_the_error():
  with pytest.raises(ValueError, match="not_a_field"):
    gin_utils.model_config_from_gin(["models/tiny_mamba2.gin"], ["ssmjax.ModelConfig.not_a_field = 1"])


def test_missing_gin_file_is_named_in_the_error():
  with pytest.raises(FileNotFoundError, match="models/no_such_model.gin"):
    gin_utils.parse(["models/no_such_model.gin"], finalize=False)


def test_missing_include_is_named_in_the_error(tmp_path):
  experiment = tmp_path / "experiment.gin"
  experiment.write_text("include 'models/no_such_model.gin'\n")
  with pytest.raises(FileNotFoundError, match="no_such_model.gin"):
    gin_utils.parse([str(experiment)], finalize=False)


def test_include_is_relative_to_the_configs_dir(tmp_path):
  experiment = tmp_path / "experiment.gin"
  experiment.write_text("include 'models/tiny_hybrid.gin'\nD_MODEL = 32\n")
  assert gin_utils.model_config_from_gin([str(experiment)]) == presets.get("tiny_hybrid").replace(d_model=32)


def test_file_without_model_macro_is_an_error(tmp_path):
  empty = tmp_path / "empty.gin"
  empty.write_text("D_MODEL = 32\n")
  with pytest.raises(ValueError, match="MODEL"):
    gin_utils.model_config_from_gin([str(empty)])


def test_config_to_gin_round_trips_inf_and_tuples(tmp_path):
  # Given a config whose non-default fields include float('inf') inside a tuple,
  mamba2 = Mamba2Config(d_state=16, headdim=16, dt_limit=(0.5, math.inf), A_init_range=(2.0, 8.0))
  config = ModelConfig(vocab_size=512, d_model=64, pattern="M-M*", mamba2=mamba2, norm_eps=1e-6, init_depth=3)
  # when it is written as gin and read back,
  path = tmp_path / "round_trip.gin"
  path.write_text(gin_utils.config_to_gin("round_trip", config))
  # then it is the same config.
  assert "%ssmjax.INF" in path.read_text()
  assert gin_utils.model_config_from_gin([str(path)]) == config


def test_registration_is_idempotent_and_leaves_classes_alone():
  importlib.reload(gin_utils)
  gin.parse_config(["ssmjax.ModelConfig.d_model = 1"])
  assert ModelConfig(vocab_size=8, d_model=64, pattern="M").d_model == 64  # direct calls see no gin bindings.
