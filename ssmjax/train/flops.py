"""Model FLOPs per token, from the config, per layer kind: the numerator of MFU.

Conventions (a multiply-add is 2 FLOPs; norms, activations, softmax, exp and other elementwise work are not counted,
except the Mamba-1 recurrence, which is elementwise by nature):

  ``M`` Mamba-2   in_proj 2·D·(2E + 2GN + H), conv 2·K·(E + 2GN), out_proj 2·E·D, and the SSD chunked algorithm
                  with chunk Q (Mamba-2 paper, "SSD algorithm"): intra-chunk C·Bᵀ per group 2·Q·G·N and its product
                  with x 2·Q·E, chunk states Bᵀx 2·N·E, state read-out C·h 2·N·E.
  ``M`` Mamba-1   in_proj 2·D·2E, conv 2·K·E, x_proj 2·E·(R + 2N), dt_proj 2·R·E, out_proj 2·E·D, and the selective
                  scan 7·E·N (dt·A, dt·B·x, the state update's multiply and add, the read-out's multiply-add).
  ``*`` attention q/k/v projections 2·D·K·(H + 2·KV), output projection 2·H·K·D, and the causal half of the scores and
                  of the weighted sum: 2 · 2·H·K·(T + 1)/2 for sequence length T (the mean number of keys per query).
  ``-`` MLP       2·D·F per weight matrix (2 matrices, 3 for SwiGLU).
  output layer    2·D·V (the embedding lookup is free).

A train step costs 3x the forward (the backward pass is two matmuls per forward matmul). Rematerialisation adds work
that these model FLOPs deliberately leave out: MFU measures useful work, not what the hardware ran.
"""

from __future__ import annotations

from ssmjax.config import ATTENTION, MAMBA, MLP, ModelConfig

# Peak dense bf16 FLOP/s per device (per chip for TPUs, as jax counts one device per chip on v4/v5p/v5e/v6e),
# from the vendors' spec sheets; keys are lower-case substrings of ``jax.Device.device_kind``.
PEAK_FLOPS_BY_DEVICE_KIND = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,  # v5p reports "TPU v5"
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
}


def mamba2_forward_flops(config: ModelConfig) -> int:
  m, d = config.mamba2, config.d_model
  h, e, g, n = m.resolved_nheads(d), m.d_inner(d), m.ngroups, m.d_state
  projections = 2 * d * (2 * e + 2 * g * n + h) + 2 * e * d
  conv = 2 * m.d_conv * (e + 2 * g * n)
  ssd = 2 * m.chunk_size * g * n + 2 * m.chunk_size * e + 4 * n * e
  return projections + conv + ssd


def mamba1_forward_flops(config: ModelConfig) -> int:
  m, d = config.mamba1, config.d_model
  e, n, r = m.d_inner(d), m.d_state, m.resolved_dt_rank(d)
  projections = 2 * d * 2 * e + 2 * e * (r + 2 * n) + 2 * r * e + 2 * e * d
  return projections + 2 * m.d_conv * e + 7 * e * n


def attention_forward_flops(config: ModelConfig, seqlen: int) -> float:
  a, d = config.attention, config.d_model
  h, kv, k = a.num_heads, a.resolved_kv_heads(), a.resolved_head_dim(d)
  projections = 2 * d * k * (h + 2 * kv) + 2 * h * k * d
  return projections + 2 * 2 * h * k * (seqlen + 1) / 2


def mlp_forward_flops(config: ModelConfig) -> int:
  matrices = 3 if config.mlp.activation == "swiglu" else 2
  return 2 * config.d_model * config.mlp.hidden_size * matrices


def forward_flops_per_layer(config: ModelConfig, seqlen: int) -> dict[str, float]:
  """Forward FLOPs per token of one layer of each kind in ``config.pattern`` (``"M"``, ``"*"``, ``"-"``)."""
  per_kind = {}
  for kind in sorted(set(config.pattern)):
    if kind == MAMBA:
      mamba = mamba2_forward_flops if config.mamba_version == 2 else mamba1_forward_flops
      per_kind[kind] = float(mamba(config))
    elif kind == ATTENTION:
      per_kind[kind] = float(attention_forward_flops(config, seqlen))
    elif kind == MLP:
      per_kind[kind] = float(mlp_forward_flops(config))
  return per_kind


def flops_per_token(config: ModelConfig, seqlen: int) -> dict:
  """``{"per_layer": {kind: forward FLOPs}, "layers": {kind: total forward FLOPs of that kind}, "output_layer",
  "forward", "train"}``, all per token at sequence length ``seqlen``; ``train`` = 3 x ``forward``."""
  if seqlen <= 0:
    raise ValueError(f"seqlen must be positive, got {seqlen}")
  per_layer = forward_flops_per_layer(config, seqlen)
  layers = {kind: per_layer[kind] * config.pattern.count(kind) for kind in per_layer}
  output_layer = 2.0 * config.d_model * config.vocab_size
  forward = sum(layers.values()) + output_layer
  return {"per_layer": per_layer, "layers": layers, "output_layer": output_layer, "forward": forward,
          "train": 3.0 * forward}


def peak_flops_per_device(device_kind: str) -> float | None:
  """The spec-sheet bf16 peak of a device kind, or None when unknown (CPUs)."""
  kind = device_kind.lower()
  for key, peak in PEAK_FLOPS_BY_DEVICE_KIND.items():
    if key in kind:
      return peak
  return None
