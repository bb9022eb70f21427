"""The training input pipeline: one grain dataset per host, yielding that host's rows of each global batch.

Global batch ``s`` is the same whatever the number of hosts: its row ``r`` is row ``s * global_batch_size + r`` of the
synthetic stream, or the next packed row of text stream ``r``. Host ``p`` of ``P`` yields rows
``[p * b, (p + 1) * b)`` with ``b = global_batch_size / P``, so the hosts' batches stacked in process order are exactly
the global batch of a single host. Each batch is a dict of NumPy arrays::

  "inputs"    int32   [b, seq_len]
  "targets"   int32   [b, seq_len]   (inputs shifted left by one: the next tokens)
  "loss_mask" float32 [b, seq_len]   (1 where the target counts in the loss)

The iterator is a grain ``DatasetIterator``: ``get_state()`` is a small JSON-able dict and ``set_state`` on a fresh
iterator of the same config resumes exactly.
"""

from __future__ import annotations

import atexit
import weakref

import grain

from ssmjax.data.config import DataConfig
from ssmjax.data.synthetic import synthetic_rows
from ssmjax.data.text import text_batches
from ssmjax.tokenizers import load_tokenizer


# Iterators whose background threads must stop before the interpreter does: a prefetch thread still inside native code
# (grain's index shuffle, ArrayRecord) when Python finalizes aborts the process ("terminate called ...").
_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()
    # grain's __del__ closes each iterator of the pipeline again during module teardown, when grain's module globals
    # are gone (an "Exception ignored" message per iterator); they are closed already, so make that a no-op.
    nodes = [iterator]
    while nodes:
      node = nodes.pop()
      node.close = _closed_already
      nodes.extend(getattr(node, "_parents", ()))


def _closed_already() -> None:
  pass


def _slices_as_tuples(state):
  """Undoes JSON's tuple -> list on packing slices: grain's ConcatThenSplit compares them with a tuple."""
  if isinstance(state, dict):
    return {key: ({name: tuple(value) for name, value in value.items()} if key == "remainder_slices"
                  else _slices_as_tuples(value)) for key, value in state.items()}
  if isinstance(state, list):
    return [_slices_as_tuples(value) for value in state]
  return state


class _JsonStateIterator(grain.DatasetIterator):
  """Passes elements through; ``set_state`` accepts a state that went through JSON (as grain's orbax handler does)."""

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(_slices_as_tuples(state))


class _JsonStateIterDataset(grain.IterDataset):

  def __iter__(self) -> grain.DatasetIterator:
    return _JsonStateIterator(self._parent.__iter__())


def _check_host(config: DataConfig, process_index: int, process_count: int) -> None:
  if not isinstance(process_count, int) or process_count < 1:
    raise ValueError(f"process_count must be a positive integer, got {process_count!r}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count={process_count}), got {process_index!r}")
  if config.global_batch_size % process_count:
    raise ValueError(f"DataConfig.global_batch_size={config.global_batch_size} is not divisible by "
                     f"process_count={process_count}: every host must get the same number of rows")


def host_batch_size(config: DataConfig, process_count: int = 1) -> int:
  """Rows each host yields per step."""
  return config.global_batch_size // process_count


def make_train_dataset(config: DataConfig, *, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """This host's batches as an infinite grain ``IterDataset`` (see the module docstring)."""
  config.validate()
  _check_host(config, process_index, process_count)
  tokenizer = load_tokenizer(config.tokenizer)
  rows_per_host = host_batch_size(config, process_count)
  if config.source == "synthetic":
    batches = synthetic_rows(config, tokenizer).batch(rows_per_host, drop_remainder=True)
    host_batches = batches[process_index::process_count]
    read = grain.ReadOptions(num_threads=min(config.prefetch, 4), prefetch_buffer_size=config.prefetch)
    return host_batches.to_iter_dataset(read)
  rows = range(process_index * rows_per_host, (process_index + 1) * rows_per_host)
  batches = text_batches(config, tokenizer, rows)
  if config.prefetch:
    batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=config.prefetch)
  return _JsonStateIterDataset(batches)


def make_train_iterator(config: DataConfig, *, process_index: int = 0,
                        process_count: int = 1) -> grain.DatasetIterator:
  """A checkpointable iterator over this host's batches (``get_state`` / ``set_state``); see the module docstring.

  ``process_index`` / ``process_count`` say which slice of the global batch this host feeds: normally
  ``jax.process_index()`` / ``jax.process_count()``. When hosts hold the same batch rows (a mesh whose batch axes do
  not span all hosts), pass the index and count of the distinct batch slices instead, so that those hosts read the
  same data. ``close()`` stops the background threads; iterators still open at interpreter exit are closed then.
  """
  iterator = iter(make_train_dataset(config, process_index=process_index, process_count=process_count))
  _OPEN_ITERATORS.add(iterator)
  return iterator


def data_vocab_size(config: DataConfig) -> int:
  """Every id the pipeline produces is below this; the model's vocabulary must be at least as large."""
  return load_tokenizer(config.tokenizer).vocab_size
