"""Forward and forward+backward time of every `pallas_kernels.ssd` implementation on the current backend.

Shapes are the Mamba-2 layers of mamba2-130m, mamba2-2.7b and the 8B hybrid (SHAPES below), at batch x seqlen from
1 x 2048 to 8 x 4096. Achieved TFLOP/s use `pallas_kernels.ssd.cost.ssd_flops` (the chunked algorithm's matmul FLOPs;
forward + backward counts 3x the forward). Where `mamba_ssm` and a CUDA GPU are available, mamba_ssm's Triton
`mamba_chunk_scan_combined` is timed side by side on the same shapes. Prints a table and one JSON line (and writes
the JSON to --json when given).

  python benchmarks/ssd.py                                            # everything available, all shapes
  python benchmarks/ssd.py --shapes=mamba2-130m --sizes=1x2048 --implementations=chunked,reference --dtype=float32

Implementations: "reference", "chunked" and "pallas" (the backend's kernel) by default, those the backend runs. On
CPU "pallas" is not available; the interpret-mode kernels ("pallas_gpu_interpret", "pallas_tpu_interpret") can be
named explicitly, but they emulate the kernels and their times say nothing about kernel speed (they are labelled
"interpret" in the output).
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app, flags

# name -> (nheads, headdim, ngroups, dstate, chunk_size): the Mamba-2 layer of each model (SPEC §1.2, §6.3).
SHAPES = {
    "mamba2-130m": (24, 64, 1, 128, 256),  # d_model 768, expand 2
    "mamba2-2.7b": (80, 64, 1, 128, 256),  # d_model 2560, expand 2
    "hybrid-8b": (128, 64, 8, 128, 128),  # d_model 4096, Megatron defaults
}
SIZES = ("1x2048", "1x4096", "8x2048", "8x4096")

_SHAPES = flags.DEFINE_list("shapes", list(SHAPES), f"Layer shapes to run, from {list(SHAPES)}.")
_SIZES = flags.DEFINE_list("sizes", list(SIZES), "batch x seqlen pairs, e.g. 1x2048.")
_IMPLEMENTATIONS = flags.DEFINE_list("implementations", None,
                                     "pallas_kernels.ssd implementations; default: those of the current backend.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "dtype of x, B, C (dt, A, D: float32).")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed calls per measurement (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
_BACKWARD = flags.DEFINE_bool("backward", True, "Also time forward + backward.")
_MAMBA_SSM = flags.DEFINE_bool("mamba_ssm", True, "Time mamba_ssm's Triton kernels too, when importable with CUDA.")
_JSON = flags.DEFINE_string("json", None, "Also write the JSON results to this file.")


def default_implementations(backend: str) -> list[str]:
  return ["reference", "chunked"] + (["pallas"] if backend in ("tpu", "gpu") else [])


def _median_ms(fn, iters: int, warmup: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def _jax_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, dtype):
  import jax
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  f32 = jnp.float32
  return dict(
      x=jax.random.normal(keys[0], (batch, seqlen, nheads, headdim), dtype),
      dt=jax.nn.softplus(jax.random.normal(keys[1], (batch, seqlen, nheads), f32) - 3.0),
      A=-jnp.exp(jax.random.uniform(keys[2], (nheads,), f32, 0.0, 2.7)),
      B=jax.random.normal(keys[3], (batch, seqlen, ngroups, dstate), dtype),
      C=jax.random.normal(keys[4], (batch, seqlen, ngroups, dstate), dtype),
      D=jax.random.normal(keys[5], (nheads,), f32),
  )


def time_jax(implementation, shape, batch, seqlen, dtype, iters, warmup, backward):
  """(forward ms, forward+backward ms or None) of `pallas_kernels.ssd` with `implementation`."""
  import jax
  import jax.numpy as jnp

  import pallas_kernels

  nheads, headdim, ngroups, dstate, chunk_size = shape
  inputs = _jax_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, getattr(jnp, dtype))

  def forward(args):
    return pallas_kernels.ssd(args["x"], args["dt"], args["A"], args["B"], args["C"], chunk_size=chunk_size,
                              D=args["D"], implementation=implementation)

  fwd = jax.jit(forward)
  fwd(inputs).block_until_ready()
  forward_ms = _median_ms(lambda: fwd(inputs).block_until_ready(), iters, warmup)
  if not backward:
    return forward_ms, None
  cotangent = jax.random.normal(jax.random.PRNGKey(1), inputs["x"].shape, inputs["x"].dtype)
  grad = jax.jit(jax.grad(lambda args: jnp.sum((forward(args) * cotangent).astype(jnp.float32))))
  jax.block_until_ready(grad(inputs))
  return forward_ms, _median_ms(lambda: jax.block_until_ready(grad(inputs)), iters, warmup)


def mamba_ssm_timer():
  """A function timing mamba_ssm's `mamba_chunk_scan_combined`, or None (and why) when it cannot run here."""
  try:
    import torch
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
  except ImportError as error:
    return None, f"mamba_ssm not importable ({error})"
  if not torch.cuda.is_available():
    return None, "no CUDA device for mamba_ssm"

  def run(shape, batch, seqlen, dtype, iters, warmup, backward):
    nheads, headdim, ngroups, dstate, chunk_size = shape
    tdtype = getattr(torch, dtype)
    device = "cuda"
    x = torch.randn(batch, seqlen, nheads, headdim, device=device, dtype=tdtype, requires_grad=backward)
    dt = torch.nn.functional.softplus(torch.randn(batch, seqlen, nheads, device=device) - 3.0).requires_grad_(backward)
    A = (-torch.exp(torch.rand(nheads, device=device) * 2.7)).requires_grad_(backward)
    B = torch.randn(batch, seqlen, ngroups, dstate, device=device, dtype=tdtype, requires_grad=backward)
    C = torch.randn(batch, seqlen, ngroups, dstate, device=device, dtype=tdtype, requires_grad=backward)
    D = torch.randn(nheads, device=device, requires_grad=backward)

    def forward():
      with torch.no_grad():
        mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D)
      torch.cuda.synchronize()

    def forward_backward():
      y = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D)
      y.backward(torch.ones_like(y))
      torch.cuda.synchronize()

    forward()
    forward_ms = _median_ms(forward, iters, warmup)
    if not backward:
      return forward_ms, None
    forward_backward()
    return forward_ms, _median_ms(forward_backward, iters, warmup)

  return run, None


def _tflops(flops, ms):
  return None if ms is None else flops / (ms * 1e-3) / 1e12


def _format(value, digits):
  return "-" if value is None else f"{value:.{digits}f}"


def main(argv):
  del argv
  import jax

  from pallas_kernels.ssd.cost import ssd_flops

  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  implementations = _IMPLEMENTATIONS.value or default_implementations(backend)
  unknown = sorted(set(_SHAPES.value) - set(SHAPES))
  if unknown:
    raise app.UsageError(f"unknown shapes {unknown}; known: {list(SHAPES)}")
  sizes = []
  for size in _SIZES.value:
    batch, _, seqlen = size.partition("x")
    sizes.append((int(batch), int(seqlen)))
  timer, why_not = mamba_ssm_timer() if _MAMBA_SSM.value else (None, "disabled by --nomamba_ssm")

  records = []
  for name in _SHAPES.value:
    shape = SHAPES[name]
    nheads, headdim, ngroups, dstate, chunk_size = shape
    for batch, seqlen in sizes:
      flops = ssd_flops(batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size)
      runs = [(impl, lambda impl=impl: time_jax(impl, shape, batch, seqlen, _DTYPE.value, _ITERS.value,
                                                 _WARMUP.value, _BACKWARD.value)) for impl in implementations]
      if timer is not None:
        runs.append(("mamba_ssm", lambda: timer(shape, batch, seqlen, _DTYPE.value, _ITERS.value, _WARMUP.value,
                                                _BACKWARD.value)))
      for impl, run in runs:
        forward_ms, forward_backward_ms = run()
        records.append(dict(
            shape=name, batch=batch, seqlen=seqlen, implementation=impl,
            note="interpret: emulation, not kernel speed" if impl.endswith("_interpret") else "",
            dtype=_DTYPE.value, forward_ms=forward_ms, forward_backward_ms=forward_backward_ms,
            forward_tflops=_tflops(flops, forward_ms), forward_backward_tflops=_tflops(3 * flops, forward_backward_ms),
            forward_flops=flops, backend=backend, device=device, jax_version=jax.__version__,
        ))
        r = records[-1]
        print(f"{name:12s} {batch}x{seqlen:<5d} {impl:22s} fwd {_format(forward_ms, 2):>9s} ms "
              f"{_format(r['forward_tflops'], 3):>7s} TFLOP/s   fwd+bwd {_format(forward_backward_ms, 2):>9s} ms "
              f"{_format(r['forward_backward_tflops'], 3):>7s} TFLOP/s  {r['note']}", flush=True)

  if why_not:
    print(f"mamba_ssm: not run ({why_not})")
  print()
  print("| shape | batch x seqlen | implementation | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
  print("|---|---|---|---|---|---|---|")
  for r in records:
    label = r["implementation"] + (" (interpret)" if r["note"] else "")
    print(f"| {r['shape']} | {r['batch']}x{r['seqlen']} | {label} | {_format(r['forward_ms'], 2)} | "
          f"{_format(r['forward_tflops'], 3)} | {_format(r['forward_backward_ms'], 2)} | "
          f"{_format(r['forward_backward_tflops'], 3)} |")
  result = dict(benchmark="ssd", backend=backend, device=device, mamba_ssm=why_not or "run", records=records)
  print(json.dumps(result))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
