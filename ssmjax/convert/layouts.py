"""PyTorch tensor layouts -> ssmjax parameter layouts, shared by every checkpoint format.

PyTorch ``nn.Linear`` weights are (out, in); ssmjax kernels are (in, out[, split into named axes]). Depthwise conv
weights are (C, 1, K) in PyTorch and (K, C) here.
"""

from __future__ import annotations

import numpy as np

from ssmjax.mixers.mamba2 import to_group_major


def linear(weight: np.ndarray) -> np.ndarray:
  """(out, in) -> (in, out)."""
  return np.ascontiguousarray(weight.T)


def split_rows(weight: np.ndarray, sizes, name: str) -> list[np.ndarray]:
  """Split a fused tensor's first axis into consecutive blocks of ``sizes`` (or into ``sizes`` equal parts)."""
  if isinstance(sizes, int):
    if weight.shape[0] % sizes:
      raise ValueError(f"{name} has {weight.shape[0]} rows, which do not split into {sizes} equal parts")
    sizes = [weight.shape[0] // sizes] * sizes
  if weight.shape[0] != sum(sizes):
    raise ValueError(f"{name} has {weight.shape[0]} rows, expected {sum(sizes)} (= {' + '.join(map(str, sizes))})")
  return np.split(weight, np.cumsum(sizes)[:-1], axis=0)


def conv(weight: np.ndarray) -> np.ndarray:
  """(C, 1, K) -> (K, C)."""
  if weight.ndim != 3 or weight.shape[1] != 1:
    raise ValueError(f"expected a depthwise conv weight of shape (channels, 1, width), got {weight.shape}")
  return np.ascontiguousarray(weight[:, 0, :].T)


def mamba2_mixer(get, *, d_inner: int, ngroups: int, d_state: int, nheads: int, bias: bool, conv_bias: bool) -> dict:
  """A Mamba-2 mixer from mamba_ssm/HF-named tensors (``get(name)`` -> array), re-laid out group-major."""
  dims = dict(d_inner=d_inner, ngroups=ngroups, d_state=d_state, nheads=nheads)
  params = {
      "in_proj": to_group_major(linear(get("in_proj.weight")), "in_proj", **dims),
      "conv1d": {"kernel": to_group_major(conv(get("conv1d.weight")), "conv", **dims)},
      "dt_bias": get("dt_bias"),
      "A_log": get("A_log"),
      "D": get("D"),
      "norm": {"scale": get("norm.weight")},
      "out_proj": linear(get("out_proj.weight")),
  }
  if conv_bias:
    params["conv1d"]["bias"] = to_group_major(get("conv1d.bias"), "conv", **dims)
  if bias:
    params["in_proj_bias"] = to_group_major(get("in_proj.bias"), "in_proj", **dims)
    params["out_proj_bias"] = get("out_proj.bias")
  return params


def mamba1_mixer(get, *, d_inner: int, bias: bool, conv_bias: bool) -> dict:
  """A Mamba-1 mixer from mamba_ssm/HF-named tensors; in_proj rows ``[x, z]`` become (D, 2, E)."""
  in_proj = linear(get("in_proj.weight"))
  params = {
      "in_proj": in_proj.reshape(in_proj.shape[0], 2, d_inner),
      "conv1d": {"kernel": conv(get("conv1d.weight"))},
      "x_proj": linear(get("x_proj.weight")),
      "dt_proj": linear(get("dt_proj.weight")),
      "dt_proj_bias": get("dt_proj.bias"),
      "A_log": get("A_log"),
      "D": get("D"),
      "out_proj": linear(get("out_proj.weight")),
  }
  if conv_bias:
    params["conv1d"]["bias"] = get("conv1d.bias")
  if bias:
    params["in_proj_bias"] = get("in_proj.bias").reshape(2, d_inner)
    params["out_proj_bias"] = get("out_proj.bias")
  return params


def attention(get, *, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool, out_bias: bool,
              names=("q_proj", "k_proj", "v_proj", "o_proj")) -> dict:
  """Separate q/k/v/o linears (rows grouped per head) -> (D, H, K) kernels and an (H, K, D) output kernel."""
  q, k, v, o = names
  params = {}
  for name, source, heads in (("q_proj", q, num_heads), ("k_proj", k, num_kv_heads), ("v_proj", v, num_kv_heads)):
    weight = linear(get(f"{source}.weight"))
    params[name] = weight.reshape(weight.shape[0], heads, head_dim)
    if qkv_bias:
      params[name + "_bias"] = get(f"{source}.bias").reshape(heads, head_dim)
  params["o_proj"] = linear(get(f"{o}.weight")).reshape(num_heads, head_dim, -1)
  if out_bias:
    params["o_proj_bias"] = get(f"{o}.bias")
  return params


def mlp(get, *, gated: bool, bias: bool, names=("fc1", "gate", "fc2")) -> dict:
  """fc1 (up), optional gate, fc2 (down) linears -> kernels."""
  fc1, gate, fc2 = names
  params = {"fc1": linear(get(f"{fc1}.weight")), "fc2": linear(get(f"{fc2}.weight"))}
  if gated:
    params["gate"] = linear(get(f"{gate}.weight"))
  if bias:
    params["fc1_bias"], params["fc2_bias"] = get(f"{fc1}.bias"), get(f"{fc2}.bias")
    if gated:
      params["gate_bias"] = get(f"{gate}.bias")
  return params
