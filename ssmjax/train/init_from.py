"""Starting a run from another run's parameters (continued pretraining, e.g. the long-context extensions).

`TrainConfig.init_from` names where the parameters come from; `load_params` finds them and restores them straight
into the new run's shardings (each device reads only its shard), checking every shape against the new model:

  an ssmjax model directory   ``model_config.json`` + ``params/`` (`ssmjax.checkpoint.save_model`: a run's exported
                              ``<workdir>/model``, or ``python -m ssmjax.convert`` output);
  a training run's workdir    its newest train checkpoint (``<workdir>/checkpoints/<step>/state``), or its exported
                              ``<workdir>/model`` when it has no checkpoints;
  a checkpoints directory     its newest step;
  one checkpoint step         ``.../checkpoints/<step>``.

Only the parameters are taken: the optimizer state, step, RNG and data position start afresh. The configs need only
agree on the parameter shapes: a different dtype, remat policy, RoPE base or sequence length is the point of an
extension run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax.core import meta

from ssmjax import checkpoint as model_checkpoint
from ssmjax.config import ModelConfig
from ssmjax.models.lm import LanguageModel

__all__ = ["load_params", "resolve_source"]

CHECKPOINTS_DIR = "checkpoints"  # ssmjax.train.loop.CHECKPOINT_DIR
MODEL_DIR = "model"  # ssmjax.train.loop.MODEL_DIR
STATE_ITEM = "state"  # ssmjax.train.checkpointing.STATE


def _is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, model_checkpoint.CONFIG_FILE))


def _newest_step(checkpoints: str) -> str | None:
  steps = [int(name) for name in os.listdir(checkpoints) if name.isdigit()
           and os.path.isdir(os.path.join(checkpoints, name, STATE_ITEM))]
  return os.path.join(checkpoints, str(max(steps))) if steps else None


def resolve_source(path: str) -> tuple[str, str]:
  """``("model", model directory)`` or ``("checkpoint", checkpoint step directory)`` for an ``init_from`` path.

  Raises FileNotFoundError naming the path and what was looked for.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"TrainConfig.init_from: {path} is not a directory")
  if _is_model_dir(path):
    return "model", path
  if os.path.isdir(os.path.join(path, STATE_ITEM)):
    return "checkpoint", path
  for checkpoints in (os.path.join(path, CHECKPOINTS_DIR), path):
    if os.path.isdir(checkpoints):
      step = _newest_step(checkpoints)
      if step is not None:
        return "checkpoint", step
  if _is_model_dir(os.path.join(path, MODEL_DIR)):
    return "model", os.path.join(path, MODEL_DIR)
  raise FileNotFoundError(
      f"TrainConfig.init_from: {path} holds no parameters: expected an ssmjax model directory "
      f"({model_checkpoint.CONFIG_FILE} + {model_checkpoint.PARAMS_DIR}/), a training workdir (with "
      f"{CHECKPOINTS_DIR}/<step>/{STATE_ITEM} or {MODEL_DIR}/), a checkpoints directory, or one checkpoint step")


def _check_shapes(found: Any, expected: Any, source: str) -> None:
  """Raise ValueError naming the parameters missing, extra or of another shape in ``found`` (shape-bearing leaves)."""
  found_leaves = {jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in
                  jax.tree_util.tree_flatten_with_path(found)[0]}
  expected_leaves = {jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in
                     jax.tree_util.tree_flatten_with_path(expected)[0]}
  problems = [f"{name}: missing" for name in sorted(set(expected_leaves) - set(found_leaves))]
  problems += [f"{name}: not in the model" for name in sorted(set(found_leaves) - set(expected_leaves))]
  problems += [f"{name}: shape {found_leaves[name]} in the source, {shape} in the model"
               for name, shape in sorted(expected_leaves.items())
               if name in found_leaves and found_leaves[name] != shape]
  if problems:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    raise ValueError(f"TrainConfig.init_from: the parameters in {source} do not fit the model: {shown}")


def _abstract_params(config: ModelConfig) -> Any:
  """The parameter shapes of ``LanguageModel(config)``, boxes stripped without sharding constraints (this runs
  eagerly, possibly under the run's ``jax.set_mesh``, where flax's unboxing would constrain ShapeDtypeStructs)."""
  boxed = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
  return meta.map_axis_meta(lambda box: box.unbox(apply_constraint=False), boxed)


def load_params(path: str, model: ModelConfig, shardings: Any) -> Any:
  """The parameters at ``path`` (see the module docstring), restored into ``shardings`` (a tree like the params).

  The dtypes are the new model's ``param_dtype`` (orbax casts on restore). Raises FileNotFoundError when ``path``
  holds no parameters, ValueError when their names or shapes differ from ``LanguageModel(model)``'s.
  """
  kind, source = resolve_source(path)
  expected = _abstract_params(model)
  target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), expected,
                                  shardings)
  if kind == "model":
    with open(os.path.join(source, model_checkpoint.CONFIG_FILE)) as f:
      source_config = model_checkpoint.config_from_dict(json.load(f))
    _check_shapes(_abstract_params(source_config), expected, source)
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(os.path.join(source, model_checkpoint.PARAMS_DIR), target)
  state_dir = os.path.join(source, STATE_ITEM)
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(state_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, dict) or "params" not in tree:
      raise ValueError(f"TrainConfig.init_from: {state_dir} is not a train state checkpoint (no 'params' entry)")
    _check_shapes(tree["params"], expected, state_dir)
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": ocp.checkpoint_utils.construct_restore_args(target)},
        partial_restore=True))
  return restored["params"]

