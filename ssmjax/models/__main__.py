"""``python -m ssmjax.models PRESET [PRESET ...]``: parameter counts with a breakdown by component."""

from __future__ import annotations

import sys

from ssmjax import presets
from ssmjax.models.counting import format_breakdown


def main(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(f"usage: python -m ssmjax.models PRESET [PRESET ...]\npresets: {', '.join(presets.names())}")
    return 0 if len(argv) >= 2 else 2
  for name in argv[1:]:
    print(format_breakdown(name, presets.get(name)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
