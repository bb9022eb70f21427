"""PNG plots of evaluation results (matplotlib, Agg backend: no display needed).

  plot_accuracy_vs_length({"Mamba-2": [(ctx, acc), ...], "Transformer": [...]}, "out.png")   # one line per model
  plot_needle_heatmap(depths, lengths, accuracy[depth, length], "needle.png")                 # depth x length

Accuracies are fractions in [0, 1]; the plots show them as percentages.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _pyplot():
  import matplotlib  # Imported here: only plotting needs it (the `eval` extra).

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt

  return plt


def _save(fig, path: str, dpi: int) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  return path


def plot_accuracy_vs_length(series: Mapping[str, Sequence[tuple[float, float]]], path: str, *,
                            title: str = "Accuracy vs context length", chance: float | None = None,
                            xlabel: str = "context length (tokens)", marker: tuple[float, str] | None = None,
                            dpi: int = 100) -> str:
  """One line per model of ``(context_length, accuracy)`` points; log-2 x axis; optional chance line and a dashed
  vertical ``marker`` ``(context_length, label)``, e.g. where training lengths end. Writes ``path`` (PNG) and
  returns it."""
  if not series:
    raise ValueError("plot_accuracy_vs_length: series is empty; give at least one model's points")
  for name, points in series.items():
    if len(points) == 0:
      raise ValueError(f"plot_accuracy_vs_length: model {name!r} has no points")
    for length, accuracy in points:
      if not length > 0 or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"plot_accuracy_vs_length: model {name!r} has point ({length}, {accuracy}); expected a "
                         "positive context length and an accuracy in [0, 1]")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  try:
    for i, (name, points) in enumerate(series.items()):
      lengths, accuracies = zip(*sorted(points))
      ax.plot(lengths, 100 * np.asarray(accuracies), marker=_MARKERS[i % len(_MARKERS)], label=name)
    if chance is not None:
      ax.axhline(100 * chance, color="gray", linestyle=":", linewidth=1, label="chance")
    if marker is not None:
      ax.axvline(marker[0], color="gray", linestyle="--", linewidth=1, label=marker[1])
    ax.set_xscale("log", base=2)
    ticks = sorted({length for points in series.values() for length, _ in points})
    if len(ticks) <= 12:
      ax.set_xticks(ticks, [str(int(t)) if float(t).is_integer() else f"{t:g}" for t in ticks])
      ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path, dpi)
  finally:
    plt.close(fig)


def plot_needle_heatmap(depths: Sequence[float], lengths: Sequence[int], accuracy: np.ndarray, path: str, *,
                        title: str = "Needle retrieval", dpi: int = 100) -> str:
  """Heatmap of ``accuracy[depth_index, length_index]`` (insertion depth down, context length across), each cell
  annotated with its percentage. Writes ``path`` (PNG) and returns it."""
  accuracy = np.asarray(accuracy, dtype=float)
  if accuracy.shape != (len(depths), len(lengths)) or accuracy.size == 0:
    raise ValueError(f"plot_needle_heatmap: accuracy has shape {accuracy.shape}; expected (len(depths), len(lengths))"
                     f" = ({len(depths)}, {len(lengths)}), both non-zero")
  if np.any((accuracy < 0) | (accuracy > 1)) or np.any(np.isnan(accuracy)):
    raise ValueError("plot_needle_heatmap: accuracies must be in [0, 1]")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.5 * len(depths)))
  try:
    image = ax.imshow(100 * accuracy, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(depths)):
      for j in range(len(lengths)):
        ax.text(j, i, f"{100 * accuracy[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return _save(fig, path, dpi)
  finally:
    plt.close(fig)
