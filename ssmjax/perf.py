"""A roofline model of decoding speed: the time of one decode step from the bytes it must move and the FLOPs it does.

Generating one token per sequence reads every weight once (the step is a batch of matrix-vector products), reads and
writes every Mamba layer's SSM and conv state, and reads each attention layer's keys and values for the whole
context (plus writes one new pair). At decode batch sizes that traffic, not arithmetic, sets the time:

  step time = max(bytes moved / memory bandwidth, FLOPs / peak FLOP rate)

`predict_decode` applies that to a `ModelConfig` on a `Device` preset. It is the model behind the paper's claim that
the 8B Mamba-2-Hybrid "is predicted to be up to 8x faster when generating tokens at inference time" than the 8B
Transformer (SPEC §3; how the paper predicted it is not published): a Transformer step grows with batch x context
(32 MHA layers x 2 x 4096 values per token), the hybrid's with only 4 GQA layers x 2 x 1024 values per token plus a
fixed-size state. ``python -m ssmjax.perf`` prints the hybrid/Transformer ratio over batch and context.

The model ignores kernel launch and communication overheads and assumes perfect overlap and ideal scaling over
``num_devices`` (tensor parallelism); it is a lower bound on the time of an ideal implementation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys

import jax

from ssmjax import presets
from ssmjax.cache import KVCache, Mamba1State, Mamba2State, init_cache
from ssmjax.config import MAMBA, ModelConfig
from ssmjax.models.counting import param_breakdown


@dataclasses.dataclass(frozen=True)
class Device:
  name: str
  memory_bandwidth: float  # bytes / s (HBM)
  peak_flops: float  # dense bf16 matmul FLOP / s
  memory_bytes: float  # HBM capacity per chip


# Datasheet figures per chip (dense bf16, no sparsity).
DEVICES = {
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: 3.35 TB/s HBM3, 80 GB, BF16 1,979 TFLOPS "with sparsity".
    "h100": Device("NVIDIA H100 SXM", 3.35e12, 989e12, 80e9),
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: 4.8 TB/s HBM3e, 141 GB, BF16 1,979 TFLOPS "with sparsity".
    "h200": Device("NVIDIA H200 SXM", 4.8e12, 989e12, 141e9),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB HBM2 at 819 GB/s per chip.
    "tpu_v5e": Device("TPU v5e", 819e9, 197e12, 16e9),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GB HBM2e at 2,765 GB/s per chip.
    "tpu_v5p": Device("TPU v5p", 2765e9, 459e12, 95e9),
    # cloud.google.com/tpu/docs/v6e (Trillium): 918 TFLOPs bf16, 32 GB HBM at 1,640 GB/s per chip.
    "tpu_v6e": Device("TPU v6e", 1640e9, 918e12, 32e9),
}


@dataclasses.dataclass(frozen=True)
class DecodePrediction:
  """One decode step (one new token for each of ``batch`` sequences after ``context`` tokens)."""

  step_seconds: float  # the per-token latency of every sequence
  tokens_per_second: float  # batch / step_seconds
  weight_bytes: float  # weights read
  state_bytes: float  # Mamba SSM + conv states read and written
  kv_bytes: float  # keys and values read (context) and written (one token)
  flops: float
  resident_bytes: float  # weights + states + the KV cache of context + 1 tokens, on all devices together
  bound: str  # "memory" or "compute"

  @property
  def bytes_moved(self) -> float:
    return self.weight_bytes + self.state_bytes + self.kv_bytes


def _device(device: str | Device) -> Device:
  if isinstance(device, Device):
    return device
  if device not in DEVICES:
    raise ValueError(f"unknown device {device!r}; known devices: {', '.join(DEVICES)}")
  return DEVICES[device]


@functools.lru_cache(maxsize=64)
def _param_counts(config: ModelConfig) -> tuple[int, int]:
  """(all parameters, input embedding parameters)."""
  breakdown = param_breakdown(config)
  return breakdown["total"], breakdown["embedding"]


@functools.lru_cache(maxsize=1024)
def _state_elements(config: ModelConfig, context: int) -> tuple[int, int, int]:
  """Per sequence: (SSM state elements, conv state elements, KV elements for ``context`` tokens), from the cache."""
  cache = jax.eval_shape(lambda: init_cache(config, 1, max(context, 1)))
  ssm = conv = kv = 0
  for layer in cache.layers:
    if isinstance(layer, (Mamba1State, Mamba2State)):
      ssm += math.prod(layer.ssm.shape)
      conv += math.prod(layer.conv.shape)
    elif isinstance(layer, KVCache):
      kv += math.prod(layer.k.shape) + math.prod(layer.v.shape)
  return ssm, conv, kv if context > 0 else 0


def _mixer_flops_per_sequence(config: ModelConfig, context: int) -> float:
  """Non-matmul-weight FLOPs of one step for one sequence: attention over the context, SSM and conv updates."""
  d = config.d_model
  flops = 0.0
  for kind in config.pattern:
    if kind == MAMBA and config.mamba_version == 2:
      m = config.mamba2
      # decay x state, + dt x ⊗ B (2), state · C (2), per state element; the depthwise conv: 2 per tap.
      flops += 5 * m.resolved_nheads(d) * m.headdim * m.d_state + 2 * m.conv_dim(d) * m.d_conv
    elif kind == MAMBA:
      m = config.mamba1
      flops += 5 * m.d_inner(d) * m.d_state + 2 * m.d_inner(d) * m.d_conv
    elif kind == "*":
      a = config.attention
      # q·k and p·v over context + 1 keys, 2 FLOPs per multiply-add.
      flops += 4 * (context + 1) * a.num_heads * a.resolved_head_dim(d)
  return flops


def predict_decode(config: ModelConfig, batch: int, context: int, device: str | Device = "h100", *,
                   weight_bytes: float = 2, kv_bytes: float = 2, state_bytes: float = 4, conv_bytes: float = 2,
                   num_devices: int = 1) -> DecodePrediction:
  """Predicted time of one decode step of ``batch`` sequences that have ``context`` tokens in their cache.

  Args:
    config: the model.
    batch, context: sequences decoded together, and the tokens already cached for each (prompt + generated).
    device: a key of `DEVICES` or a `Device`.
    weight_bytes, kv_bytes, conv_bytes: bytes per weight / cached key or value / conv state value (2: bf16).
    state_bytes: bytes per SSM state value (4: float32, as ssmjax keeps it).
    num_devices: chips sharing the work (ideal tensor parallelism: bandwidth and FLOPs add up, no communication).
  """
  if batch < 1 or context < 0 or num_devices < 1:
    raise ValueError(f"need batch >= 1, context >= 0, num_devices >= 1; got {batch}, {context}, {num_devices}")
  dev = _device(device)
  total_params, embedding_params = _param_counts(config)
  # Every weight is read once per step, except the input embedding, of which only the batch's rows are read (a tied
  # embedding is read whole as the output layer anyway).
  matmul_weights = total_params - (0 if config.tie_embeddings else embedding_params)
  weights_read = (matmul_weights + (0 if config.tie_embeddings else batch * config.d_model)) * weight_bytes
  ssm, conv, kv_context = _state_elements(config, context)
  _, _, kv_one = _state_elements(config, 1)
  states = 2 * batch * (ssm * state_bytes + conv * conv_bytes)  # read and written
  kv = batch * (kv_context + kv_one) * kv_bytes  # the context read, one new token written
  flops = batch * (2 * matmul_weights + _mixer_flops_per_sequence(config, context))
  memory_seconds = (weights_read + states + kv) / (dev.memory_bandwidth * num_devices)
  compute_seconds = flops / (dev.peak_flops * num_devices)
  step = max(memory_seconds, compute_seconds)
  resident = (total_params * weight_bytes + batch * (ssm * state_bytes + conv * conv_bytes)
              + batch * (kv_context + kv_one) * kv_bytes)
  return DecodePrediction(step_seconds=step, tokens_per_second=batch / step, weight_bytes=weights_read,
                          state_bytes=states, kv_bytes=kv, flops=flops, resident_bytes=resident,
                          bound="memory" if memory_seconds >= compute_seconds else "compute")


def decode_speedup(fast: ModelConfig, slow: ModelConfig, batch: int, context: int, device: str | Device = "h100",
                   **kwargs) -> float:
  """How many times faster ``fast`` decodes than ``slow`` (ratio of predicted step times)."""
  return (predict_decode(slow, batch, context, device, **kwargs).step_seconds
          / predict_decode(fast, batch, context, device, **kwargs).step_seconds)


def first_context_reaching(ratio: float, fast: ModelConfig, slow: ModelConfig, batch: int,
                           device: str | Device = "h100", max_context: int = 1 << 20, **kwargs) -> int | None:
  """The smallest context (a multiple of 1,024) at which ``fast`` is ``ratio`` times faster, or None up to max_context.

  The speed-up grows with the context (the Transformer's KV traffic grows 32x faster than the hybrid's), so a
  bisection over multiples of 1,024 finds it.
  """
  low, high = 0, max_context // 1024
  if decode_speedup(fast, slow, batch, high * 1024, device, **kwargs) < ratio:
    return None
  while high - low > 1:
    mid = (low + high) // 2
    if decode_speedup(fast, slow, batch, mid * 1024, device, **kwargs) >= ratio:
      high = mid
    else:
      low = mid
  return high * 1024


def speedup_table(device: str = "h100", batches=(1, 8, 32, 128),
                  contexts=(2048, 4096, 8192, 16384, 32768, 65536, 131072)) -> str:
  """A text table of the hybrid-8B over Transformer-8B decode speed-up, and where 8x is first reached."""
  hybrid, transformer = presets.mamba2_hybrid_8b(), presets.transformer_8b()
  lines = [f"Predicted decode speed-up, mamba2_hybrid_8b over transformer_8b, on {_device(device).name} "
           "(bf16 weights and KV, fp32 SSM state)",
           "batch \\ context " + "".join(f"{c:>9,}" for c in contexts) + "   8x from context"]
  for b in batches:
    ratios = "".join(f"{decode_speedup(hybrid, transformer, b, c, device):>8.2f}x" for c in contexts)
    first = first_context_reaching(8.0, hybrid, transformer, b, device)
    lines.append(f"{b:>15} {ratios}   {'-' if first is None else f'{first:,}'}")
  return "\n".join(lines)


if __name__ == "__main__":
  for name in sys.argv[1:] or ["h100"]:
    print(speedup_table(name))
    print()
