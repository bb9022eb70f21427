#!/usr/bin/env python
"""Writes ``configs/models/<preset>.gin`` for every preset in ``ssmjax.presets`` (see ``ssmjax.gin_utils``).

  python scripts/write_model_gins.py [--out_dir=configs/models] [--presets=mamba2_8b,tiny_mamba2]

Rerun after changing a preset; ``tests/test_gin_configs.py`` checks that each file builds exactly its preset.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # count_params only traces shapes; no accelerator needed.

from absl import app
from absl import flags

from ssmjax import gin_utils
from ssmjax import presets

_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(gin_utils.CONFIGS_DIR, "models"), "Where to write the files.")
_PRESETS = flags.DEFINE_list("presets", None, "Presets to write; default: all of them.")


def main(argv):
  del argv  # Unused.
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  for name in _PRESETS.value or presets.names():
    path = os.path.join(_OUT_DIR.value, f"{name}.gin")
    with open(path, "w") as f:
      f.write(gin_utils.config_to_gin(name, presets.get(name)))
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
