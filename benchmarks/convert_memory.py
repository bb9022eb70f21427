"""Peak host memory of ``python -m ssmjax.convert`` on a large checkpoint, against the checkpoint's size.

  python scripts/make_synthetic_megatron.py /tmp/synthetic_1b          # ~1.1B parameters, 2.2 GB bf16 (needs torch)
  python benchmarks/convert_memory.py /tmp/synthetic_1b [--format megatron] [--dtype source] [--to-hf]

Runs the converter in a fresh process under ``/usr/bin/time -v`` (its "Maximum resident set size" is the peak RSS of
the whole process: Python, JAX, the converted parameters and every temporary) and reports it with the checkpoint's
size on disk and their ratio; ``--to-hf`` then also exports the converted checkpoint to HF and measures that. The
outputs go to a temporary directory that is deleted afterwards. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def directory_bytes(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def measure(command: list[str]) -> dict:
  """Run ``command`` under /usr/bin/time -v; its peak RSS (bytes) and wall time."""
  start = time.time()
  result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
  wall = time.time() - start
  if result.returncode != 0:
    raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
  match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
  return {"peak_rss_bytes": int(match.group(1)) * 1024, "wall_s": round(wall, 1),
          "output": result.stdout.strip().splitlines()[-1]}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("source")
  ap.add_argument("--format", default="megatron")
  ap.add_argument("--dtype", default="source")
  ap.add_argument("--to-hf", action="store_true", help="also export the converted checkpoint to HF and measure it")
  args = ap.parse_args(argv)
  source_bytes = directory_bytes(args.source)
  rows = []
  work = tempfile.mkdtemp(prefix="convert_memory-")
  try:
    converted = os.path.join(work, "ssmjax")
    run = measure([sys.executable, "-m", "ssmjax.convert", "--from", args.format, args.source, converted,
                   "--dtype", args.dtype])
    rows.append({"step": f"--from {args.format}", "source_bytes": source_bytes, **run,
                 "output_bytes": directory_bytes(converted)})
    if args.to_hf:
      exported = os.path.join(work, "hf")
      run = measure([sys.executable, "-m", "ssmjax.convert", "--to", "hf", converted, exported])
      rows.append({"step": "--to hf", "source_bytes": directory_bytes(converted), **run,
                   "output_bytes": directory_bytes(exported)})
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(f"{'step':<18}{'source GB':>11}{'output GB':>11}{'peak RSS GB':>13}{'RSS / source':>14}{'wall s':>9}")
  for row in rows:
    row["rss_over_source"] = round(row["peak_rss_bytes"] / row["source_bytes"], 3)
    print(f"{row['step']:<18}{row['source_bytes'] / 1e9:>11.3f}{row['output_bytes'] / 1e9:>11.3f}"
          f"{row['peak_rss_bytes'] / 1e9:>13.3f}{row['rss_over_source']:>14.2f}{row['wall_s']:>9.1f}")
  print(json.dumps({"benchmark": "convert_memory", "source": os.path.abspath(args.source), "rows": rows}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
