"""Parameter counts of a config without allocating anything (``jax.eval_shape`` of ``init``), with a breakdown."""

from __future__ import annotations

import collections
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmjax.config import ATTENTION, MAMBA, MLP, ModelConfig

KIND_NAMES = {MAMBA: "Mamba", ATTENTION: "attention", MLP: "MLP"}


def abstract_params(config: ModelConfig) -> Any:
  """The parameter tree as ``jax.ShapeDtypeStruct`` leaves (logical-axis boxes removed)."""
  from ssmjax.models.lm import LanguageModel  # local: lm imports this package

  model = LanguageModel(config)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  return nn.meta.unbox(variables["params"])


def _size(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def count_params(config: ModelConfig) -> int:
  """Total number of parameters of ``LanguageModel(config)``."""
  return _size(abstract_params(config))


def param_breakdown(config: ModelConfig) -> dict:
  """Counts by component: embedding, output layer, final norm, and per layer kind its per-layer count by sub-module.

  Returns ``{"total", "embedding", "output_layer", "final_norm", "layers": {kind: {"count", "per_layer",
  "components": {name: n}}}}`` where a layer's components are its pre-norm and its sub-layer's parameters.
  """
  params = abstract_params(config)
  layers: dict[str, dict] = {}
  for i, kind in enumerate(config.pattern):
    layer = params[f"layers_{i}"]
    components: dict[str, int] = collections.OrderedDict()
    components["pre_norm"] = _size(layer["norm"])
    for sublayer_name, sublayer in layer.items():
      if sublayer_name != "norm":
        components.update((name, _size(leaf)) for name, leaf in sublayer.items())
    entry = layers.setdefault(kind, {"count": 0, "per_layer": sum(components.values()), "components": components})
    entry["count"] += 1
  embedding = _size(params["embed"])
  output_layer = _size(params["lm_head"]) if "lm_head" in params else 0
  return {
      "total": _size(params),
      "embedding": embedding,
      "output_layer": output_layer,
      "final_norm": _size(params["final_norm"]),
      "layers": layers,
  }


def format_breakdown(name: str, config: ModelConfig) -> str:
  """A human-readable parameter report (what ``python -m ssmjax.models PRESET`` prints)."""
  b = param_breakdown(config)
  mamba_name = f"Mamba-{config.mamba_version}"
  lines = [f"{name}: {b['total']:,} parameters  (pattern {config.pattern!r}, {config.num_layers} layers, "
           f"d_model {config.d_model}, vocab {config.vocab_size})"]
  lines.append(f"  {'embedding':<44}{b['embedding']:>16,}")
  lines.append(f"  {'output layer' + (' (tied to the embedding)' if config.tie_embeddings else ''):<44}"
               f"{b['output_layer']:>16,}")
  for kind, entry in b["layers"].items():
    label = mamba_name if kind == MAMBA else KIND_NAMES[kind]
    title = f"{entry['count']} x {label} layer ({entry['per_layer']:,} each)"
    lines.append(f"  {title:<44}{entry['count'] * entry['per_layer']:>16,}")
    for component, n in entry["components"].items():
      lines.append(f"      {component:<40}{n:>16,}")
  lines.append(f"  {'final norm':<44}{b['final_norm']:>16,}")
  return "\n".join(lines)
