"""``python -m ssmjax.convert``: foreign checkpoints -> ssmjax checkpoints, and ssmjax -> HF transformers.

  python -m ssmjax.convert --from {hf,mamba_ssm,megatron,auto} SRC DST [--dtype source|float32|bfloat16]
                           [--mesh fsdp=2,tensor=4] [--tokenizer FILE]
  python -m ssmjax.convert --to hf SRC DST [--dtype ...] [--max-shard-gb 5]

``--from`` writes DST as an ssmjax checkpoint (``model_config.json`` + orbax ``params/``, `ssmjax.checkpoint`) plus
``convert_info.json`` (source, format, unpadded vocab size, tokenizer) and a copy of the tokenizer found next to the
source (``tokenizer.json``, a SentencePiece ``*.model``) or given with ``--tokenizer``, saved as ``tokenizer.json`` /
``tokenizer.model`` so that ``ssmjax.tokenizers.load_tokenizer(DST)`` finds it. Parameters keep the
checkpoint's dtype by default (``--dtype source``); `ssmjax.checkpoint.load_model` restores them in the config's
``param_dtype``. ``--to hf`` writes a transformers directory from any loadable checkpoint.

DST must not exist. Everything is written into a temporary directory next to it and renamed at the end, so an error
(or Ctrl-C) leaves no DST and no temporary files behind.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssmjax import checkpoint
from ssmjax.convert.api import OPENERS, detect_format, load_pretrained, open_checkpoint
from ssmjax.convert.export_hf import export_hf
from ssmjax.convert.params import SOURCE_DTYPE
from ssmjax.sharding import MESH_AXES

INFO_FILE = "convert_info.json"
SAVE_CONCURRENT_GB = 1  # orbax reads / writes at most this many GB at once: bounds the extra memory
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")


@contextlib.contextmanager
def atomic_directory(destination: str) -> Iterator[str]:
  """Yield a temporary directory that becomes ``destination`` on success and is deleted on any error."""
  destination = os.path.abspath(destination)
  if os.path.exists(destination):
    raise FileExistsError(f"output {destination} already exists; choose a new directory")
  parent = os.path.dirname(destination)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output gets the usual permissions
  try:
    yield tmp
    os.rename(tmp, destination)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def parse_mesh(spec: str) -> jax.sharding.Mesh:
  """``"fsdp=2,tensor=4"`` -> a Mesh over the first 8 devices with axes ``("data", "fsdp", "tensor")``."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  for part in filter(None, spec.split(",")):
    name, _, size = part.partition("=")
    if name not in sizes or not size.isdigit() or int(size) < 1:
      raise ValueError(f"--mesh: expected comma-separated {'/'.join(MESH_AXES)}=SIZE, got {part!r}")
    sizes[name] = int(size)
  count = int(np.prod(list(sizes.values())))
  if count > jax.device_count():
    raise ValueError(f"--mesh {spec} needs {count} devices, {jax.device_count()} available")
  devices = np.array(jax.devices()[:count]).reshape(tuple(sizes.values()))
  return jax.sharding.Mesh(devices, MESH_AXES)


def find_tokenizer(source: str, info: dict) -> str | None:
  """The tokenizer file next to a checkpoint: ``tokenizer.json``, ``tokenizer.model``, the SentencePiece model that
  Megatron's ``args.tokenizer_model`` names, or a lone ``*.model``."""
  root = source if os.path.isdir(source) else os.path.dirname(source)
  candidates = [os.path.join(root, "tokenizer.json"), os.path.join(root, "tokenizer.model")]
  if info.get("tokenizer_model"):
    candidates.append(os.path.join(root, os.path.basename(info["tokenizer_model"])))
  found = [path for path in candidates if os.path.isfile(path)]
  models = sorted(glob.glob(os.path.join(root, "*.model")))
  return found[0] if found else (models[0] if len(models) == 1 else None)


def copy_tokenizer(path: str, directory: str) -> dict:
  """Copy a tokenizer file into ``directory`` as ``tokenizer.json`` / ``tokenizer.model`` (the names
  `ssmjax.tokenizers.load_tokenizer` looks for in a directory), with HF's ``tokenizer_config.json`` next to it."""
  if path.endswith(".json"):
    name, kind = "tokenizer.json", "hf_tokenizer_json"
  elif path.endswith(".model"):
    name, kind = "tokenizer.model", "sentencepiece"
  else:
    raise ValueError(f"tokenizer {path} is neither an HF tokenizer .json nor a SentencePiece .model")
  shutil.copy(path, os.path.join(directory, name))
  extras = [n for n in TOKENIZER_EXTRAS if os.path.isfile(os.path.join(os.path.dirname(path), n))]
  for extra in extras:
    shutil.copy(os.path.join(os.path.dirname(path), extra), os.path.join(directory, extra))
  return {"file": name, "kind": kind, "copied_from": os.path.abspath(path), "extra_files": extras}


def convert_to_ssmjax(source: str, destination: str, format: str | None = None, dtype: str = SOURCE_DTYPE,
                      mesh: jax.sharding.Mesh | None = None, tokenizer: str | None = None) -> dict:
  """Convert a foreign checkpoint into an ssmjax checkpoint directory (atomically); returns convert_info."""
  format = format or detect_format(source)
  if format not in OPENERS:
    raise ValueError(f"--from must be one of {sorted(OPENERS)}, got {format!r} for {source}")
  if os.path.exists(destination):
    raise FileExistsError(f"output {os.path.abspath(destination)} already exists; choose a new directory")
  if tokenizer is not None and not os.path.isfile(tokenizer):
    raise FileNotFoundError(f"--tokenizer {tokenizer} does not exist")
  conversion = open_checkpoint(source, format)
  params = conversion.build(dtype=dtype, mesh=mesh)
  tokenizer = tokenizer or find_tokenizer(source, conversion.info)
  dtypes = sorted({str(np.dtype(x.dtype)) for x in jax.tree_util.tree_leaves(params)})
  info = {"source": os.path.abspath(source), **conversion.info, "stored_dtypes": dtypes,
          "padded_vocab_size": conversion.config.vocab_size}
  with atomic_directory(destination) as tmp:
    checkpoint.save_model(tmp, conversion.config, params, save_concurrent_gb=SAVE_CONCURRENT_GB)
    info["tokenizer"] = copy_tokenizer(tokenizer, tmp) if tokenizer else None
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=2, default=str)
  return info


def convert_to_hf(source: str, destination: str, dtype: str | None = None, max_shard_bytes: int = 5 * 2**30) -> list:
  """Export any loadable checkpoint (usually an ssmjax one) to a transformers directory (atomically)."""
  if os.path.exists(destination):
    raise FileExistsError(f"output {os.path.abspath(destination)} already exists; choose a new directory")
  config, params = load_stored(source)
  try:
    with atomic_directory(destination) as tmp:
      files = export_hf(config, params, tmp, dtype=dtype, max_shard_bytes=max_shard_bytes)
      tokenizer = _recorded_tokenizer(source)
      if tokenizer:
        files += [copy_tokenizer(tokenizer, tmp)["file"]]
  finally:
    if isinstance(params, StoredParams):
      params.close()
  return files


class StoredParams(collections.abc.Mapping):
  """An ssmjax checkpoint's parameters, each top-level entry (``embed``, ``layers_3``, ...) restored when it is read.

  Nothing is cached, so an exporter that reads one layer at a time holds one layer in memory; values are NumPy arrays
  in their stored dtypes.
  """

  def __init__(self, params_path: str):
    self.path = params_path
    self._checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(restore_concurrent_gb=SAVE_CONCURRENT_GB))
    metadata = self._checkpointer.metadata(params_path).item_metadata
    self.metadata = dict(metadata.tree if hasattr(metadata, "tree") else metadata)

  def __getitem__(self, key: str):
    subtree = {key: self.metadata[key]}
    item = jax.tree_util.tree_map(lambda _: np.empty(0), subtree)
    restore_args = jax.tree_util.tree_map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), subtree)
    restored = self._checkpointer.restore(
        self.path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    return restored[key]

  def __iter__(self):
    return iter(self.metadata)

  def __len__(self) -> int:
    return len(self.metadata)

  def close(self) -> None:
    self._checkpointer.close()


def load_stored(source: str):
  """``(config, params)`` of a checkpoint in its stored dtypes; an ssmjax checkpoint's params are `StoredParams`."""
  if detect_format(source) != "ssmjax":
    return load_pretrained(source, dtype=SOURCE_DTYPE)
  with open(os.path.join(source, checkpoint.CONFIG_FILE)) as f:
    config = checkpoint.config_from_dict(json.load(f))
  params_path = os.path.join(os.path.abspath(source), checkpoint.PARAMS_DIR)
  if not os.path.exists(params_path):
    raise FileNotFoundError(f"{params_path} does not exist: {source!r} is not an ssmjax model checkpoint")
  return config, StoredParams(params_path)


def _recorded_tokenizer(source: str) -> str | None:
  """The tokenizer file a `convert_to_ssmjax` output recorded in its convert_info.json."""
  info_path = os.path.join(source, INFO_FILE)
  if not os.path.isfile(info_path):
    return None
  with open(info_path) as f:
    tokenizer = json.load(f).get("tokenizer")
  return os.path.join(source, tokenizer["file"]) if tokenizer else None


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ssmjax.convert", description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from", dest="source_format", choices=[*OPENERS, "auto"],
                         help="convert a checkpoint of this format into an ssmjax checkpoint")
  direction.add_argument("--to", dest="target_format", choices=["hf"], help="export to HF transformers")
  parser.add_argument("src", help="source checkpoint (directory, or a Megatron model_optim_rng.pt)")
  parser.add_argument("dst", help="output directory (must not exist)")
  parser.add_argument("--dtype", default=None,
                      help="parameter dtype to write: 'source' (default: keep the checkpoint's), float32, bfloat16")
  parser.add_argument("--mesh", default=None, help="place parameters sharded on a mesh, e.g. fsdp=2,tensor=4")
  parser.add_argument("--tokenizer", default=None, help="tokenizer file to copy (default: found next to SRC)")
  parser.add_argument("--max-shard-gb", type=float, default=5.0, help="--to hf: safetensors shard size limit")
  args = parser.parse_args(argv)
  start = time.time()
  try:
    if args.target_format == "hf":
      dtype = None if args.dtype in (None, SOURCE_DTYPE) else args.dtype
      files = convert_to_hf(args.src, args.dst, dtype=dtype, max_shard_bytes=int(args.max_shard_gb * 2**30))
      print(f"wrote {args.dst}: {', '.join(files)} ({time.time() - start:.1f}s)")
    else:
      mesh = parse_mesh(args.mesh) if args.mesh else None
      info = convert_to_ssmjax(args.src, args.dst, format=None if args.source_format == "auto" else args.source_format,
                               dtype=args.dtype or SOURCE_DTYPE, mesh=mesh, tokenizer=args.tokenizer)
      print(f"wrote {args.dst} from {info['format']} checkpoint {args.src} (dtypes {info['stored_dtypes']}, "
            f"tokenizer {info['tokenizer'] and info['tokenizer']['file']}; {time.time() - start:.1f}s)")
  except (OSError, ValueError, KeyError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {message}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
