"""Data configuration: frozen dataclasses for the input pipeline and the built-in synthetic tasks.

The synthetic defaults are sized for the byte tokenizer and short CPU runs: short names, numbers and keys, small books.
Retrieval is learnt late and small instances are learnt first: with ``tiny_hybrid`` (batch 16 x 128 tokens, AdamW
1e-2) the phone-book answer loss leaves chance after ~150 steps with books of 1-4 entries but not within 600 steps with
books of 1-8 (BENCHMARKS.md, "Synthetic tasks"). Every example of a task must fit in one sequence of ``seq_len + 1``
tokens (inputs plus the final target); `make_train_iterator` checks the largest one up front.
"""

from __future__ import annotations

import dataclasses

SOURCES = ("synthetic", "text")
TASKS = ("phonebook", "mqar", "copying")


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _check_range(name: str, low: int, high: int, minimum: int) -> None:
  _check(minimum <= low <= high, f"{name}: expected {minimum} <= min <= max, got min={low}, max={high}")


@dataclasses.dataclass(frozen=True)
class PhonebookTask:
  """Phone-book lookup (Jelassi et al. 2024, "Repeat After Me"): a book of name->number lines, then queries.

  Byte-level text of one example with the default formats (a book of 3, every entry queried)::

    kzq:41\\nabe:07\\nmtt:99\\n\\n?abe:07\\n?mtt:99\\n?kzq:41\\n

  The answer of a query is its number (loss and accuracy count only those tokens). Queries draw distinct names from
  the book while there are enough. In evaluation the first ``num_shots`` queries are unscored demonstrations (the
  few-shot format) and the following ``num_queries`` are scored; in training every answer carries loss. With
  ``num_queries=None`` every entry is queried once (in random order), which gives the most answer tokens per book.
  """

  min_book_size: int = 1  # Entries per book in training, drawn uniformly from [min_book_size, max_book_size].
  max_book_size: int = 4  # Small books are what a tiny model picks up first (see the module docstring).
  name_len: int = 3  # Lower-case letters per name (names in a book are distinct).
  number_len: int = 2  # Digits per number.
  num_queries: int | None = None  # Scored queries per example; None: one per book entry.
  num_shots: int = 0  # Demonstration queries before the scored ones (answers shown, never scored in evaluation).
  book_format: str = "{name}:{number}\n"  # One book line; must contain {name} and {number}.
  query_format: str = "?{name}:{number}\n"  # One query; the text from {number} on is the answer (number only).
  separator: str = "\n"  # Between the book and the queries.

  def validate(self) -> None:
    _check_range("PhonebookTask book size", self.min_book_size, self.max_book_size, 1)
    _check(1 <= self.name_len <= 12 and 1 <= self.number_len <= 18,
           f"PhonebookTask: need 1 <= name_len <= 12 and 1 <= number_len <= 18, got {self.name_len}, {self.number_len}")
    _check(self.max_book_size <= 26**self.name_len,
           f"PhonebookTask: max_book_size={self.max_book_size} exceeds the {26**self.name_len} distinct names of "
           f"name_len={self.name_len}")
    _check((self.num_queries is None or self.num_queries >= 1) and self.num_shots >= 0,
           "PhonebookTask: need num_queries >= 1 (or None) and num_shots >= 0")
    for field in ("book_format", "query_format"):
      text = getattr(self, field)
      _check("{name}" in text and "{number}" in text, f"PhonebookTask.{field} must contain {{name}} and {{number}}, "
             f"got {text!r}")
    _check(self.query_format.index("{name}") < self.query_format.index("{number}"),
           f"PhonebookTask.query_format must give the name before the number, got {self.query_format!r}")


@dataclasses.dataclass(frozen=True)
class MQARTask:
  """Multi-query associative recall (Arora et al. 2023, Zoology): key-value pairs, then queried keys.

  One example with the defaults: ``ab3kx7qq1|kx7qq1ab3\\n`` (3 pairs, each queried once in random order). Keys are
  distinct strings of lower-case letters, values digits; the loss counts the value after each queried key. Keys of
  two letters keep the examples packed into one row from sharing keys (which would make recall ambiguous).
  """

  min_pairs: int = 2  # Pairs per example, drawn uniformly from [min_pairs, max_pairs].
  max_pairs: int = 8
  key_len: int = 2  # Letters per key (max_pairs <= 26**key_len).
  value_len: int = 1  # Digits per value.
  num_queries: int | None = None  # Queried keys per example (distinct while there are enough); None: every key.
  separator: str = "|"  # Between the pairs and the queries.

  def validate(self) -> None:
    _check_range("MQARTask pairs", self.min_pairs, self.max_pairs, 1)
    _check(1 <= self.key_len <= 12 and 1 <= self.value_len <= 18,
           f"MQARTask: need 1 <= key_len <= 12 and 1 <= value_len <= 18, got {self.key_len}, {self.value_len}")
    _check(self.max_pairs <= 26**self.key_len,
           f"MQARTask: max_pairs={self.max_pairs} exceeds the {26**self.key_len} distinct keys of "
           f"key_len={self.key_len}")
    _check(self.num_queries is None or self.num_queries >= 1, "MQARTask: num_queries must be >= 1 or None")


@dataclasses.dataclass(frozen=True)
class CopyingTask:
  """Copying: a random string, a separator, then the string again (the loss counts the copy): ``qwhbz|qwhbz\\n``."""

  min_len: int = 2  # String length, drawn uniformly from [min_len, max_len].
  max_len: int = 16
  alphabet: str = "abcdefghijklmnopqrstuvwxyz"
  separator: str = "|"

  def validate(self) -> None:
    _check_range("CopyingTask length", self.min_len, self.max_len, 1)
    _check(len(self.alphabet) >= 2, f"CopyingTask.alphabet needs at least 2 symbols, got {self.alphabet!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The training input pipeline (see `ssmjax.data.make_train_iterator`).

  ``source="synthetic"``: rows of the tasks in ``tasks`` (mixed by ``task_weights``), each row filled with whole
  examples of one task separated by EOD and padded with PAD (no loss on padding, prompts or EOD).
  ``source="text"``: documents from ``paths``, tokenized, EOD appended to each, shuffled per epoch and packed into
  rows of ``seq_len + 1`` tokens without padding; every target carries loss. File kinds, by name:
  ``*.txt`` one document per file; ``*.jsonl`` one JSON object per line, the document in ``text_field``;
  ``*.array_record*`` one UTF-8 document per record. A directory stands for the files of those kinds inside it.
  """

  source: str = "synthetic"  # "synthetic" | "text".
  tasks: tuple[str, ...] = TASKS  # The synthetic mix, from TASKS.
  task_weights: tuple[float, ...] = ()  # Row proportions per task; () = equal.
  phonebook: PhonebookTask = PhonebookTask()
  mqar: MQARTask = MQARTask()
  copying: CopyingTask = CopyingTask()
  paths: tuple[str, ...] = ()  # Text data: files, directories or glob patterns.
  text_field: str = "text"  # JSONL key holding the document.
  tokenizer: str = "byte"  # See ssmjax.tokenizers.load_tokenizer.
  seq_len: int = 256  # Tokens per row (inputs and targets each have seq_len tokens).
  global_batch_size: int = 8  # Rows per step over all hosts; each host yields global_batch_size / process_count.
  seed: int = 0  # Everything random (task content, document order) derives from it.
  shuffle: bool = True  # Text: shuffle documents, differently each epoch.
  prefetch: int = 2  # Batches prepared ahead in background threads (0: prepare on demand).

  def validate(self) -> None:
    _check(self.source in SOURCES, f"DataConfig.source: unknown source {self.source!r}; expected one of {SOURCES}")
    _check(isinstance(self.seq_len, int) and self.seq_len >= 1,
           f"DataConfig.seq_len must be a positive integer, got {self.seq_len!r}")
    _check(isinstance(self.global_batch_size, int) and self.global_batch_size >= 1,
           f"DataConfig.global_batch_size must be a positive integer, got {self.global_batch_size!r}")
    _check(self.prefetch >= 0, f"DataConfig.prefetch must be >= 0, got {self.prefetch}")
    if self.source == "synthetic":
      _check(len(self.tasks) >= 1, "DataConfig.tasks is empty; name at least one of " + ", ".join(TASKS))
      for task in self.tasks:
        _check(task in TASKS, f"DataConfig.tasks: unknown task {task!r}; expected names from {TASKS}")
      _check(len(set(self.tasks)) == len(self.tasks), f"DataConfig.tasks has duplicates: {self.tasks}")
      _check(not self.task_weights or len(self.task_weights) == len(self.tasks),
             f"DataConfig.task_weights has {len(self.task_weights)} entries for {len(self.tasks)} tasks")
      _check(all(w > 0 for w in self.task_weights), f"DataConfig.task_weights must be > 0, got {self.task_weights}")
      for task in self.tasks:
        getattr(self, task).validate()
    else:
      _check(len(self.paths) >= 1, "DataConfig.paths is empty: source='text' needs data files or glob patterns")
