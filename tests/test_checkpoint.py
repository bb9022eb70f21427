"""Model checkpoints (model_config.json + orbax params) round-trip exactly."""

import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

import ssmjax
from ssmjax import checkpoint
from ssmjax.config import Mamba2Config


def test_config_round_trips_through_json_including_infinity_and_tuples():
  config = ssmjax.presets.get("tiny_hybrid").replace(mamba2=Mamba2Config(headdim=16, dt_limit=(0.01, math.inf)))
  text = json.dumps(checkpoint.config_to_dict(config))
  assert checkpoint.config_from_dict(json.loads(text)) == config


def test_unknown_config_field_is_named():
  data = checkpoint.config_to_dict(ssmjax.presets.get("tiny_mamba2"))
  data["mamba2"]["wings"] = 2
  with pytest.raises(ValueError, match="wings"):
    checkpoint.config_from_dict(data)


def test_save_and_load_model_round_trip(tmp_path):
  config = ssmjax.presets.get("tiny_mamba2")
  ids = np.zeros((1, 3), np.int32)
  params = nn.meta.unbox(jax.jit(ssmjax.LanguageModel(config).init)(jax.random.PRNGKey(0), ids)["params"])
  checkpoint.save_model(str(tmp_path / "ckpt"), config, params)
  loaded_config, loaded = checkpoint.load_model(str(tmp_path / "ckpt"))
  assert loaded_config == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_loading_a_missing_checkpoint_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="model_config.json"):
    checkpoint.load_model(str(tmp_path))
