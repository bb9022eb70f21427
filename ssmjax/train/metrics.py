"""Run metrics: one JSON line per logged step, TensorBoard event files, and the console progress bar.

``<workdir>/metrics.jsonl`` gets ``{"step", "loss", "grad_norm", "lr", "accuracy", "tokens_per_s", "mfu", ...}``
lines (appended to, so a resumed run continues the file); ``<workdir>/tensorboard/`` gets the same scalars as
TensorBoard event files (`ssmjax.train.tensorboard`, no TensorFlow needed). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import tqdm

from ssmjax.train.tensorboard import EventWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
  """Appends metrics to ``metrics.jsonl`` and TensorBoard; a no-op when ``enabled`` is False."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tensorboard = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        self._tensorboard = EventWriter(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tensorboard is not None:
      self._tensorboard.scalars(int(step), {name: value for name, value in record.items() if name != "step" and
                                            isinstance(value, (int, float)) and math.isfinite(value)})

  def flush(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None


def _plain(value: Any) -> Any:
  if value is None or isinstance(value, (str, bool, int)):
    return value
  return float(value)


def read_metrics(workdir: str) -> list[dict]:
  """The records of ``<workdir>/metrics.jsonl``; for a step logged twice (a resumed run) the later record wins."""
  by_step: dict[int, dict] = {}
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        by_step[record["step"]] = record
  return [by_step[step] for step in sorted(by_step)]


class Throughput:
  """Tokens per second (and MFU) between consecutive `update` calls; the first call only starts the clock, so
  calling it after the first (compiling) step keeps compilation out of the figures."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None):
    self.tokens_per_step = tokens_per_step
    self.flops_per_token = flops_per_token
    self.peak_flops = peak_flops  # of all devices together; None: MFU unknown.
    self._last: tuple[int, float] | None = None

  def update(self, step: int) -> dict[str, float | None]:
    now = time.perf_counter()
    out: dict[str, float | None] = {}
    if self._last is not None and step > self._last[0]:
      tokens_per_s = self.tokens_per_step * (step - self._last[0]) / max(now - self._last[1], 1e-9)
      out["tokens_per_s"] = tokens_per_s
      out["mfu"] = tokens_per_s * self.flops_per_token / self.peak_flops if self.peak_flops else None
    self._last = (step, now)
    return out


class ProgressBar:
  """A tqdm bar over the steps with loss and tokens/s (tqdm shows the ETA); silent when ``enabled`` is False."""

  def __init__(self, total: int, initial: int, enabled: bool = True):
    self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled)

  def update(self, step: int, metrics: dict[str, Any]) -> None:
    postfix = {"loss": f"{float(metrics['loss']):.4f}"}
    if metrics.get("tokens_per_s"):
      postfix["tok/s"] = f"{metrics['tokens_per_s']:,.0f}"
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    self._bar.close()
