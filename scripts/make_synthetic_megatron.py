#!/usr/bin/env python
"""Write a synthetic Megatron-LM hybrid checkpoint of about 1B parameters (random bf16 values) for memory benchmarks.

  python scripts/make_synthetic_megatron.py /tmp/synthetic_1b [--layers 32 --hidden 2048 --tp 1]

The layout is the released 8B hybrid's (SPEC §6.2: Transformer Engine names, Mamba-2 with 8 groups and head dim 64,
GQA attention without position encoding, GELU MLPs with ffn 4 x hidden, untied embeddings), with the hybrid pattern
from the ratios 0.08 / 0.5 and each tensor-parallel rank's slice shapes. Values are random: this checkpoint is for
`benchmarks/convert_memory.py`, not for logits (the fixtures in tests/fixtures/megatron check those). Needs torch.
The default (32 layers, hidden 2048, vocab 32,768) has 1,092,745,664 parameters (2.19 GB in bf16). Not committed.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssmjax.config import hybrid_pattern  # noqa: E402


def rank_state(pattern, d, vocab, tp, gen):
  import torch

  def rand(*shape):
    return torch.empty(*shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen)

  heads, groups, state = 2 * d // 64, 8, 128  # head dim 64
  e = 2 * d // tp
  conv = e + 2 * groups // tp * state
  q_heads, kv_groups, head_dim, ffn = d // 128, 8, 128, 4 * d
  sd = collections.OrderedDict([("embedding.word_embeddings.weight", rand(vocab // tp, d))])
  for i, kind in enumerate(pattern):
    p = f"decoder.layers.{i}."
    if kind == "M":
      sd[p + "norm.weight"] = torch.ones(d, dtype=torch.bfloat16)
      sd[p + "mixer.in_proj.weight"] = rand(2 * e + 2 * groups // tp * state + heads // tp, d)
      sd[p + "mixer.conv1d.weight"] = rand(conv, 1, 4)
      sd[p + "mixer.conv1d.bias"] = rand(conv)
      for name in ("dt_bias", "A_log", "D"):
        sd[p + "mixer." + name] = torch.ones(heads // tp, dtype=torch.float32)
      sd[p + "mixer.norm.weight"] = torch.ones(e, dtype=torch.bfloat16)
      sd[p + "mixer.out_proj.weight"] = rand(d, e)
    elif kind == "*":
      sd[p + "self_attention.linear_qkv.layer_norm_weight"] = torch.ones(d, dtype=torch.bfloat16)
      sd[p + "self_attention.linear_qkv.weight"] = rand((q_heads + 2 * kv_groups) * head_dim // tp, d)
      sd[p + "self_attention.linear_proj.weight"] = rand(d, q_heads * head_dim // tp)
      sd[p + "self_attention.linear_qkv._extra_state"] = None
    else:
      sd[p + "mlp.linear_fc1.layer_norm_weight"] = torch.ones(d, dtype=torch.bfloat16)
      sd[p + "mlp.linear_fc1.weight"] = rand(ffn // tp, d)
      sd[p + "mlp.linear_fc2.weight"] = rand(d, ffn // tp)
  sd["decoder.final_norm.weight"] = torch.ones(d, dtype=torch.bfloat16)
  sd["output_layer.weight"] = rand(vocab // tp, d)
  return sd


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("out")
  ap.add_argument("--layers", type=int, default=32)
  ap.add_argument("--hidden", type=int, default=2048)
  ap.add_argument("--vocab", type=int, default=32768)
  ap.add_argument("--tp", type=int, default=1)
  args = ap.parse_args(argv)
  import torch

  pattern = hybrid_pattern(args.layers, 0.08, 0.5)
  d = args.hidden
  namespace = argparse.Namespace(
      num_layers=args.layers, hidden_size=d, ffn_hidden_size=4 * d, num_attention_heads=d // 128,
      group_query_attention=True, num_query_groups=8, kv_channels=128, hybrid_override_pattern=pattern,
      normalization="RMSNorm", norm_epsilon=1e-5, position_embedding_type="none", add_bias_linear=False,
      untie_embeddings_and_output_weights=True, padded_vocab_size=args.vocab, tensor_model_parallel_size=args.tp,
      pipeline_model_parallel_size=1, mamba_state_dim=128, mamba_head_dim=64, mamba_num_groups=8,
      params_dtype=torch.bfloat16, bf16=True)
  os.makedirs(args.out, exist_ok=False)
  with open(os.path.join(args.out, "latest_checkpointed_iteration.txt"), "w") as f:
    f.write("release")
  gen = torch.Generator().manual_seed(0)
  total = 0
  for rank in range(args.tp):
    state = rank_state(pattern, d, args.vocab, args.tp, gen)
    total += sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    rank_dir = os.path.join(args.out, "release", f"mp_rank_{rank:02d}")
    os.makedirs(rank_dir)
    torch.save({"args": namespace, "checkpoint_version": 3.0, "iteration": 0, "model": state},
               os.path.join(rank_dir, "model_optim_rng.pt"))
    del state
  print(f"wrote {args.out}: pattern {pattern}, {total:,} parameters, tensor parallel {args.tp}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
