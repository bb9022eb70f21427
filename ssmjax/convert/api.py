"""``load_pretrained(path)``: any supported checkpoint -> ``(ModelConfig, params)``, with the format detected.

Formats (SPEC §6): ``hf`` (transformers ``config.json`` with a ``model_type`` + safetensors), ``mamba_ssm``
(state-spaces ``config.json`` with ``d_model`` + ``pytorch_model.bin``), ``megatron`` (legacy Megatron-LM
``latest_checkpointed_iteration.txt`` + ``mp_rank_XX/model_optim_rng.pt``) and ``ssmjax`` (``model_config.json`` +
orbax ``params/``, what ``python -m ssmjax.convert`` writes).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from ssmjax import checkpoint
from ssmjax.config import ModelConfig
from ssmjax.convert.hf import open_hf
from ssmjax.convert.mamba_ssm import open_mamba_ssm
from ssmjax.convert.megatron import TRACKER_FILE, open_megatron
from ssmjax.convert.params import SOURCE_DTYPE, Conversion, param_shardings, unflatten
from ssmjax.sharding import DEFAULT_RULES

OPENERS = {"hf": open_hf, "mamba_ssm": open_mamba_ssm, "megatron": open_megatron}
FORMATS = (*OPENERS, "ssmjax")


def detect_format(path: str) -> str:
  """``"hf"``, ``"mamba_ssm"``, ``"megatron"`` or ``"ssmjax"``, from the files at ``path``."""
  if os.path.isfile(path):
    if path.endswith(".pt"):
      return "megatron"
    raise ValueError(f"{path} is a file; expected a checkpoint directory (or a Megatron model_optim_rng.pt)")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
  if os.path.exists(os.path.join(path, checkpoint.CONFIG_FILE)):
    return "ssmjax"
  if (os.path.exists(os.path.join(path, TRACKER_FILE)) or os.path.isdir(os.path.join(path, "mp_rank_00"))
      or os.path.basename(os.path.normpath(path)).startswith("mp_rank_")):
    return "megatron"
  config_path = os.path.join(path, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      try:
        fields = json.load(f)
      except ValueError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    if "model_type" in fields:
      return "hf"
    if "d_model" in fields:
      return "mamba_ssm"
    raise ValueError(f"{config_path} has neither 'model_type' (HF transformers) nor 'd_model' (state-spaces)")
  raise FileNotFoundError(f"cannot tell the checkpoint format of {path}: expected {checkpoint.CONFIG_FILE} "
                          f"(ssmjax), {TRACKER_FILE} or mp_rank_00/ (Megatron), or config.json (HF transformers / "
                          f"state-spaces)")


def open_checkpoint(path: str, format: str | None = None) -> Conversion:
  """Open a foreign checkpoint for conversion (``format`` None: detect it)."""
  format = format or detect_format(path)
  if format not in OPENERS:
    raise ValueError(f"format must be one of {sorted(OPENERS)} to convert, got {format!r}")
  return OPENERS[format](path)


def load_pretrained(path: str, format: str | None = None, dtype: str | None = None,
                    mesh: jax.sharding.Mesh | None = None,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple[ModelConfig, dict]:
  """Load a checkpoint of any supported format -> ``(ModelConfig, params)``.

  ``LanguageModel(config).apply({"params": params}, input_ids)`` then gives the model's logits. Tensors are read and
  converted one at a time. ``format``: one of `FORMATS` (default: detected). ``dtype``: parameter dtype (default
  ``config.param_dtype``; ``"source"`` keeps the stored dtypes). ``mesh``: place the parameters on it, sharded by
  their logical axis names through ``rules``.
  """
  format = format or detect_format(path)
  if format == "ssmjax":
    return _load_ssmjax(path, dtype, mesh, rules)
  conversion = open_checkpoint(path, format)
  return conversion.config, conversion.build(dtype=dtype, mesh=mesh, rules=rules)


def _load_ssmjax(path: str, dtype: str | None, mesh, rules) -> tuple[ModelConfig, dict]:
  """A checkpoint `checkpoint.save_model` wrote (restored in ``config.param_dtype``, then cast to ``dtype``)."""
  sharding = None
  if mesh is not None:
    with open(os.path.join(path, checkpoint.CONFIG_FILE)) as f:
      config = checkpoint.config_from_dict(json.load(f))
    sharding = unflatten(param_shardings(config, mesh, rules))
  config, params = checkpoint.load_model(path, sharding=sharding)
  target = None if dtype in (None, SOURCE_DTYPE) else jnp.dtype(dtype)
  return config, jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=target or x.dtype), params)
