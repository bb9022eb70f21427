"""The project's one gin helper: configurable names for the config dataclasses, parsing, and model gin files.

The library never reads gin; ``train.py`` / ``eval.py`` call `parse` and notebooks call `model_config_from_gin` (or
build dataclasses directly). Importing this module registers, without modifying the classes:

  ``@ssmjax.ModelConfig()``, ``@ssmjax.Mamba1Config()``, ``@ssmjax.Mamba2Config()``, ``@ssmjax.AttentionConfig()``,
  ``@ssmjax.MLPConfig()``   the frozen dataclasses of ``ssmjax.config``; gin's calls return the original classes'
                            instances, so a config built from gin equals one built in Python.
  ``%ssmjax.INF``           ``float('inf')``, which has no gin literal (e.g. ``dt_limit = (0.0, %ssmjax.INF)``).
  ``@ssmjax.train``         the training run, `ssmjax.train.train` (``configs/runs/*.gin`` bind its arguments), and
                            its configs ``@ssmjax.TrainConfig()``, ``@ssmjax.OptimizerConfig()``,
                            ``@ssmjax.CheckpointConfig()``, ``@ssmjax.MeshConfig()``, ``@ssmjax.DataConfig()``,
                            ``@ssmjax.PhonebookTask()``, ``@ssmjax.MQARTask()``, ``@ssmjax.CopyingTask()``.

A model gin file (``configs/models/<preset>.gin``, written by `config_to_gin`) binds the ``MODEL`` macro:

  VOCAB_SIZE = 512                      # the fields without a default are UPPER_CASE macros
  D_MODEL = 64
  PATTERN = 'MMMM'
  MODEL = @ssmjax.ModelConfig()
  ssmjax.ModelConfig.vocab_size = %VOCAB_SIZE
  ...
  ssmjax.ModelConfig.mamba2 = @ssmjax.Mamba2Config()
  ssmjax.Mamba2Config.ngroups = 2       # nested configs: only the fields that differ from the class defaults

and is overridden by later bindings, e.g. ``D_MODEL = 128`` or ``ssmjax.Mamba2Config.chunk_size = 64``.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import os
import re
from typing import Any, Sequence

import gin

from ssmjax import config as config_lib
from ssmjax import presets
from ssmjax.models import count_params

MODULE = "ssmjax"  # gin module prefix: @ssmjax.ModelConfig(), ssmjax.Mamba2Config.ngroups = 8.
INF = f"{MODULE}.INF"  # the gin constant for float('inf'); referenced as %ssmjax.INF.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIG_CLASSES = (config_lib.ModelConfig, config_lib.Mamba1Config, config_lib.Mamba2Config,
                  config_lib.AttentionConfig, config_lib.MLPConfig)
MODEL_MACRO = "MODEL"
TRAIN_NAME = "train"  # @ssmjax.train: the run that train.py calls.
OPERATIVE_CONFIG_FILE = "config.gin"


_configured_train = None


def _train_configurables() -> tuple:
  from ssmjax import data as data_lib  # pylint: disable=g-import-not-at-top  # heavier imports (grain, orbax)
  from ssmjax import train as train_lib  # pylint: disable=g-import-not-at-top

  return (train_lib.TrainConfig, train_lib.OptimizerConfig, train_lib.CheckpointConfig, train_lib.MeshConfig,
          data_lib.DataConfig, data_lib.PhonebookTask, data_lib.MQARTask, data_lib.CopyingTask)


def _register() -> None:
  """Registers the config classes and ``%ssmjax.INF``; safe to repeat (gin accepts re-registering the same class)."""
  for cls in CONFIG_CLASSES + _train_configurables():
    gin.external_configurable(cls, module=MODULE)  # a wrapper: ``cls`` itself is left untouched.
  from ssmjax import train as train_lib  # pylint: disable=g-import-not-at-top

  global _configured_train
  _configured_train = gin.external_configurable(train_lib.train, name=TRAIN_NAME, module=MODULE)
  try:
    gin.constant(INF, math.inf)
  except ValueError:  # already defined by an earlier import or reload of this module.
    pass


_register()
# An ``include`` statement; parse() follows includes itself (gin's own lookup can crash on a namespace package of the
# same name as the include's directory, e.g. a tests/models/ folder on sys.path).
_INCLUDE = re.compile(r"""^include\s+(['"])(?P<path>[^'"]+)\1\s*(#.*)?$""")


def _find(gin_file: str, search_paths: Sequence[str], included_from: str | None) -> str:
  candidates = [gin_file] if os.path.isabs(gin_file) else [os.path.join(d, gin_file) for d in search_paths]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  where = f" (included from {included_from})" if included_from else ""
  searched = [os.path.abspath(c) for c in candidates]
  raise FileNotFoundError(f"gin file {gin_file!r}{where} not found; searched {searched}")


def _parse_file(gin_file: str, search_paths: Sequence[str], stack: tuple[str, ...] = ()) -> None:
  """Parses one file, following its includes in place; gin's errors name this file and the line."""
  path = _find(gin_file, search_paths, stack[-1] if stack else None)
  if path in stack:
    raise ValueError(f"gin include cycle: {' -> '.join(stack + (path,))}")
  with open(path) as f:
    lines = f.read().splitlines()

  def parse_lines(begin: int, end: int) -> None:  # keeps gin's line numbers those of the file.
    text = io.StringIO("\n" * begin + "\n".join(lines[begin:end]) + "\n")
    text.name = path
    gin.parse_config(text)

  begin = 0
  for i, line in enumerate(lines):
    match = _INCLUDE.match(line.strip())
    if match:
      parse_lines(begin, i)
      _parse_file(match["path"], search_paths, stack + (path,))
      begin = i + 1
  parse_lines(begin, len(lines))


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = (CONFIGS_DIR, "."),
          finalize: bool = True) -> None:
  """Parses ``gin_files`` (in order) then ``bindings`` into gin's global config.

  Files, and the files named by their ``include 'path'`` lines, are absolute paths or relative to the first of
  ``search_paths`` that has them: by default the repository's ``configs/``, then the working directory, so
  ``'models/mamba2_8b.gin'`` works from anywhere. An include is parsed where it stands, so later lines override it.
  ``finalize`` locks the config (gin's ``finalize``), as a training run should.

  Raises:
    FileNotFoundError: a file or include was not found (the message names it, its includer and the paths searched).
    ValueError: a binding names an unknown configurable or parameter, or does not parse (gin's message names the
      binding, and its file and line); an include cycle.
  """
  if isinstance(gin_files, str) or isinstance(bindings, str):
    raise TypeError("gin_files and bindings must be sequences of strings, not a single string")
  for gin_file in gin_files:
    _parse_file(gin_file, search_paths)
  gin.parse_config(list(bindings))
  if finalize:
    gin.finalize()


def model_config_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
                          search_paths: Sequence[str] = (CONFIGS_DIR, ".")) -> config_lib.ModelConfig:
  """Clears gin's config, parses ``gin_files`` and ``bindings`` (see `parse`) and returns the ``MODEL`` macro's config.

  ``model_config_from_gin(['models/tiny_mamba2.gin'], ['D_MODEL = 128'])`` is ``presets.get('tiny_mamba2')`` with
  d_model 128. The parsed config is left in place (unlocked) for callers that query more of it.
  """
  gin.clear_config()
  parse(gin_files, bindings, search_paths, finalize=False)
  try:
    model = gin.query_parameter(f"%{MODEL_MACRO}")
  except ValueError as e:
    raise ValueError(f"no {MODEL_MACRO} macro is bound by gin files {list(gin_files)} and bindings {list(bindings)}; "
                     f"a model gin file sets '{MODEL_MACRO} = @{MODULE}.ModelConfig()'") from e
  if isinstance(model, gin.config.ConfigurableReference):  # @ssmjax.ModelConfig() (or a macro): call it.
    model = model.scoped_configurable_fn()
  if not isinstance(model, config_lib.ModelConfig):
    raise TypeError(f"{MODEL_MACRO} must evaluate to a ModelConfig, got {type(model).__name__}: {model!r}")
  return model


def configured_train():
  """`ssmjax.train.train` with the parsed gin bindings of ``ssmjax.train`` applied (what ``train.py`` calls)."""
  return _configured_train


def write_operative_config(workdir: str) -> str:
  """Writes gin's operative config (the bindings actually used so far) to ``<workdir>/config.gin``; its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, OPERATIVE_CONFIG_FILE)
  with open(path, "w") as f:
    f.write(gin.operative_config_str())
  return path


# ---------------------------------------------------------------------------------------------------------------------
# Writing model gin files.


def _literal(value: Any) -> str:
  """``value`` as gin text; only the types config dataclasses hold (None, bool, int, float, str, tuples)."""
  if value is None or isinstance(value, (bool, int, str)):
    return repr(value)
  if isinstance(value, float):
    if value == math.inf:
      return f"%{INF}"
    if not math.isfinite(value):
      raise ValueError(f"cannot write {value!r} in gin (only +inf has a constant, %{INF})")
    return repr(value)
  if isinstance(value, tuple):
    items = [_literal(v) for v in value]
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
  raise TypeError(f"cannot write a {type(value).__name__} in gin: {value!r}")


def _field_default(field: dataclasses.Field) -> Any:
  if field.default is not dataclasses.MISSING:
    return field.default
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return dataclasses.MISSING


def _bindings(obj: Any, macros: list[str], blocks: list[list[str]]) -> list[str]:
  """Binding lines for the fields of dataclass ``obj`` that differ from their defaults (nested: appended to blocks)."""
  name = f"{MODULE}.{type(obj).__name__}"
  lines = []
  for field in dataclasses.fields(obj):
    value, default = getattr(obj, field.name), _field_default(field)
    if default is dataclasses.MISSING:  # a required field: an UPPER_CASE macro others can refer to and override.
      macros.append(f"{field.name.upper()} = {_literal(value)}")
      lines.append(f"{name}.{field.name} = %{field.name.upper()}")
    elif dataclasses.is_dataclass(value):
      if value != default:  # built from the class defaults plus its own non-default fields.
        lines.append(f"{name}.{field.name} = @{MODULE}.{type(value).__name__}()")
        blocks.append(_bindings(value, macros, blocks))
    elif value != default:
      lines.append(f"{name}.{field.name} = {_literal(value)}")
  return lines


def _summary(config: config_lib.ModelConfig) -> str:
  mamba = f"Mamba-{config.mamba_version}"
  counts = [(config.pattern.count(symbol), kind) for symbol, kind in
            ((config_lib.MAMBA, mamba), (config_lib.ATTENTION, "attention"), (config_lib.MLP, "MLP"))]
  kinds = ", ".join(f"{n} {kind}" for n, kind in counts if n)
  return f"{config.num_layers} sub-blocks ({kinds}), d_model {config.d_model}, vocabulary {config.vocab_size}."


def _short_count(n: int) -> str:
  for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
    if n >= scale:
      return f"{n / scale:.3g}{suffix}"
  return str(n)


def config_to_gin(name: str, config: config_lib.ModelConfig) -> str:
  """The text of a gin file whose ``MODEL`` macro builds ``config`` exactly; ``name`` is the preset (file) name.

  The header gives the parameter count (``ssmjax.count_params`` traces the model abstractly: about a second for an 8B
  model), the preset function's docstring when ``name`` is one, a summary and how to use the file.
  """
  preset_fn = getattr(presets, name, None)
  doc = inspect.getdoc(preset_fn) if inspect.isfunction(preset_fn) else None
  n = count_params(config)
  header = [f"{name}: {n:,} parameters ({_short_count(n)})", "", *(doc.splitlines() if doc else []), _summary(config),
            "",
            f"Use: include 'models/{name}.gin' in an experiment gin file (configs/ is on the search path) and pass",
            f"%{MODEL_MACRO} to what takes a ModelConfig; later bindings override, e.g. D_MODEL = 1024 or",
            f"{MODULE}.ModelConfig.dtype = 'bfloat16'. In Python:",
            f"  gin_utils.model_config_from_gin(['models/{name}.gin']) == presets.get('{name}')",
            "Written by scripts/write_model_gins.py from ssmjax/presets.py: change the preset and rerun it."]
  macros: list[str] = []
  blocks: list[list[str]] = []
  model_lines = _bindings(config, macros, blocks)
  sections = [[f"# {line}".rstrip() for line in header], macros,
              [f"{MODEL_MACRO} = @{MODULE}.ModelConfig()", *model_lines], *blocks]
  return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"
