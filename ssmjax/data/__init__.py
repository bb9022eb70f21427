"""Input pipelines (grain): built-in synthetic tasks and packed text, per host, deterministic and resumable.

  config = DataConfig(source="synthetic", seq_len=256, global_batch_size=8, seed=0)
  it = make_train_iterator(config, process_index=jax.process_index(), process_count=jax.process_count())
  batch = next(it)          # {"inputs", "targets": int32 [b, seq_len], "loss_mask": float32 [b, seq_len]}
  state = it.get_state()    # goes into the checkpoint; it.set_state(state) on a fresh iterator resumes exactly

`phonebook_accuracy` scores a model on phone-book lookup (see `ssmjax.data.evaluation`).
"""

from ssmjax.data.config import SOURCES, TASKS, CopyingTask, DataConfig, MQARTask, PhonebookTask
from ssmjax.data.evaluation import (EvalSet, answer_accuracy, phonebook_accuracy, phonebook_book_size_for_length,
                                    phonebook_eval_set, task_eval_set)
from ssmjax.data.pipeline import data_vocab_size, host_batch_size, make_train_dataset, make_train_iterator

__all__ = [
    "SOURCES",
    "TASKS",
    "CopyingTask",
    "DataConfig",
    "EvalSet",
    "MQARTask",
    "PhonebookTask",
    "answer_accuracy",
    "data_vocab_size",
    "host_batch_size",
    "make_train_dataset",
    "make_train_iterator",
    "phonebook_accuracy",
    "phonebook_book_size_for_length",
    "phonebook_eval_set",
    "task_eval_set",
]
