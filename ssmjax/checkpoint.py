"""Model checkpoints: a directory with ``model_config.json`` and the parameters as an orbax checkpoint.

This is the format `python -m ssmjax.convert` writes and that ``train.py`` (fine-tuning) and ``eval.py`` load:

  <directory>/model_config.json   the ModelConfig as JSON (`config_to_dict`)
  <directory>/params/             orbax StandardCheckpointer tree of the ``params`` collection

Orbax writes into a temporary directory and renames it when complete, so an interrupted save leaves no ``params/``
that looks finished. Training runs keep their own CheckpointManager layout (with optimizer and data state) and can
export this format for their parameters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from ssmjax import config as config_lib

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
_NESTED = {"mamba1": config_lib.Mamba1Config, "mamba2": config_lib.Mamba2Config,
           "attention": config_lib.AttentionConfig, "mlp": config_lib.MLPConfig}


def _encode_float(value: Any) -> Any:
  if isinstance(value, float) and math.isinf(value):
    return "inf" if value > 0 else "-inf"
  if isinstance(value, (tuple, list)):
    return [_encode_float(v) for v in value]
  return value


def config_to_dict(config: config_lib.ModelConfig) -> dict:
  """A JSON-safe dict (infinities as the strings "inf" / "-inf")."""
  return {k: _encode_float(v) for k, v in dataclasses.asdict(config).items()} | {
      name: {k: _encode_float(v) for k, v in dataclasses.asdict(getattr(config, name)).items()} for name in _NESTED}


def _decode(field_type_default: Any, value: Any) -> Any:
  if isinstance(field_type_default, tuple):
    return tuple(float(v) if isinstance(v, str) else v for v in value)
  return value


def config_from_dict(data: dict) -> config_lib.ModelConfig:
  """Inverse of `config_to_dict`; unknown fields raise ValueError naming them."""
  def build(cls, values: dict):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
      raise ValueError(f"{CONFIG_FILE}: unknown {cls.__name__} fields {unknown}")
    return {k: _decode(fields[k].default, v) for k, v in values.items()}

  values = build(config_lib.ModelConfig, data)
  for name, cls in _NESTED.items():
    if name in values:
      values[name] = cls(**build(cls, values[name]))
  return config_lib.ModelConfig(**values)


def save_model(directory: str, config: config_lib.ModelConfig, params: Any,
               save_concurrent_gb: int | None = None) -> None:
  """Write ``config`` and ``params`` to ``directory`` (created; an existing ``params/`` is an error).

  ``save_concurrent_gb``: write synchronously with at most this many GB in flight (orbax's default is asynchronous
  with 96 GB), which bounds the extra host memory of saving a large model (``python -m ssmjax.convert`` uses 1).
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  if save_concurrent_gb is None:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(directory, PARAMS_DIR), params)
  else:
    handler = ocp.StandardCheckpointHandler(save_concurrent_gb=save_concurrent_gb)
    with ocp.Checkpointer(handler) as checkpointer:
      checkpointer.save(os.path.join(directory, PARAMS_DIR), args=ocp.args.StandardSave(params))
  tmp = os.path.join(directory, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(config_to_dict(config), f, indent=2)
  os.replace(tmp, os.path.join(directory, CONFIG_FILE))


def load_model(directory: str, sharding: Any = None) -> tuple[config_lib.ModelConfig, Any]:
  """Read a directory written by `save_model` -> ``(ModelConfig, params)``.

  ``sharding``: optional pytree of ``jax.sharding.Sharding`` (or one sharding for all leaves) to restore onto.
  """
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  params_path = os.path.join(directory, PARAMS_DIR)
  for path in (config_path, params_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: {directory!r} is not an ssmjax model checkpoint")
  with open(config_path) as f:
    config = config_from_dict(json.load(f))
  from ssmjax.models.counting import abstract_params

  abstract = abstract_params(config)
  if sharding is not None:
    shardings = sharding if isinstance(sharding, dict) else jax.tree_util.tree_map(lambda _: sharding, abstract)
    abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                      shardings)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(params_path, abstract)
  return config, params
