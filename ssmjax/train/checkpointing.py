"""Train checkpoints: orbax CheckpointManager with the train state and the grain iterator state, saved asynchronously.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. ``state`` is the whole `TrainState` (params, optimizer state,
step, RNG) as an orbax pytree, restored straight into the run's shardings; ``data`` is grain's per-process iterator
state (``process_<i>-of-<n>.json``), so a resumed run reads exactly the batches the interrupted one would have.

A save is asynchronous: the arrays are copied off the devices, training continues, and a background thread writes
them into ``<step>.orbax-checkpoint-tmp-*`` which is renamed to ``<step>`` only when complete. A process killed during
a save therefore leaves a temporary directory that is never listed as a step. A step directory that does not restore
(copied by hand, truncated by a full disk) is renamed to ``<step>.unreadable`` with a warning and the next older one
is used: a partial checkpoint is never taken as the latest.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

STATE, DATA = "state", "data"
UNREADABLE_SUFFIX = ".unreadable"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 100  # save every this many steps (and at the end, and on SIGTERM); 0: only those.
  keep: int = 3  # keep the last this many checkpoints; 0: keep all.
  async_save: bool = True  # write in a background thread while training goes on.

  def __post_init__(self):
    if self.every_steps < 0 or self.keep < 0:
      raise ValueError(f"CheckpointConfig.every_steps and keep must be >= 0, got {self.every_steps}, {self.keep}")


def _type_handlers():
  """Orbax's array handlers, without replica-parallel saving in a single process: there it only splits each
  replicated array into per-device slices, which costs a small compilation per array shape and device."""
  type_handlers = ocp.type_handlers
  return type_handlers.create_type_handler_registry(
      (jax.Array, type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1)),
      (np.ndarray, type_handlers.NumpyHandler()),
      (int, type_handlers.ScalarHandler()), (float, type_handlers.ScalarHandler()),
      (np.number, type_handlers.ScalarHandler()))


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs under ``directory``; every process must call it."""

  def __init__(self, directory: str, config: CheckpointConfig = CheckpointConfig()):
    self.directory = os.path.abspath(directory)
    self.config = config
    self._manager = self._open()
    self._last_saved: int | None = None  # the step of the latest save started by this object (maybe in flight).

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.config.keep or None, create=True,
        enable_async_checkpointing=self.config.async_save)
    handlers = {STATE: ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers()),
                DATA: grain.checkpoint.CheckpointHandler()}
    return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
    """Starts saving ``state`` and the iterator's position as ``step`` when due (a multiple of ``every_steps``) or
    ``force``d; True if it did."""
    due = self.config.every_steps > 0 and step % self.config.every_steps == 0
    if not (due or force) or step == self._last_saved or step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(**{STATE: ocp.args.PyTreeSave(state), DATA: grain.checkpoint.CheckpointSave(
        data_iterator)})
    saved = self._manager.save(step, args=args, force=True)  # orbax's own policy would also save the first step.
    if saved:
      self._last_saved = step
    return saved

  def restore(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
    """The newest readable checkpoint as ``(state, step)`` (``data_iterator`` is repositioned in place), or None.

    ``abstract_state``: the state's ``jax.ShapeDtypeStruct`` leaves with their shardings, which the arrays are
    restored into.
    """
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    for step in sorted(self._manager.all_steps(), reverse=True):
      args = ocp.args.Composite(**{
          STATE: ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args),
          DATA: grain.checkpoint.CheckpointRestore(data_iterator)})
      try:
        restored = self._manager.restore(step, args=args)
      except Exception as e:  # pylint: disable=broad-except  # any unreadable step: set it aside, use the older.
        logging.warning("checkpoint step %d in %s does not restore (%s: %s); setting it aside as %s%s", step,
                        self.directory, type(e).__name__, e, step, UNREADABLE_SUFFIX)
        self._set_aside(step)
        continue
      return restored[STATE], step
    return None

  def _set_aside(self, step: int) -> None:
    self._manager.close()
    if jax.process_index() == 0:
      path = os.path.join(self.directory, str(step))
      target = path + UNREADABLE_SUFFIX
      suffix = 1
      while os.path.exists(target):
        target, suffix = f"{path}{UNREADABLE_SUFFIX}{suffix}", suffix + 1
      os.rename(path, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"ssmjax_checkpoint_set_aside_{step}")
    self._manager = self._open()

  def wait(self) -> None:
    """Blocks until the pending asynchronous save has been written (and renamed into place)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
