#!/usr/bin/env python
"""Build tiny random HuggingFace transformers models and save reference fixtures.

For every case this writes ``<out>/<case>/`` with what ``save_pretrained`` writes
(``config.json`` + ``model.safetensors``, or sharded safetensors plus
``model.safetensors.index.json`` for the ``llama`` case) and ``reference.npz``
holding, for each sequence length T in ``SEQ_LENS``:

* ``input_ids_T{T}``: int32 ``[2, T]``
* ``logits_T{T}``:    float32 ``[2, T, vocab]``, the PyTorch model's full-sequence
  logits (``use_cache=False``, eval mode, float32, CPU, pure-torch code paths)

plus ``seq_lens`` (int32).

All values come from fixed seeds (NumPy PCG64 for every parameter and input), so
``python scripts/make_hf_fixtures.py`` regenerates the same weights and inputs.
Parameters that HF initialises to constants (norm weights, A_log, D, dt biases,
conv biases) are randomised so a loader that drops or swaps a tensor fails.

``--verify`` additionally re-implements each forward pass in NumPy (float64,
sequential recurrences, no chunking) from the saved files only, checks it against
``reference.npz`` and prints how much the logits move under a few deliberate
mistakes (sensitivity of the fixtures).

Needs: torch, transformers (5.x; written against 5.24), safetensors, numpy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys

import numpy as np

SEQ_LENS = (1, 7, 16, 29, 64)
BATCH = 2

# Optional accelerated packages whose presence would make transformers take a
# non-torch path. The fixtures are defined by the pure-torch code paths.
_KERNEL_PACKAGES = ("mamba_ssm", "causal_conv1d", "kernels", "mambapy", "flash_attn")


# ----------------------------------------------------------------------------
# Case definitions
# ----------------------------------------------------------------------------

def _case_configs():
    from transformers import LlamaConfig, Mamba2Config, MambaConfig, NemotronHConfig

    return {
        # Mamba-1, tied embeddings.
        "mamba": dict(
            seed=1001,
            cls="MambaForCausalLM",
            config=MambaConfig(
                vocab_size=80,
                hidden_size=32,
                state_size=8,
                num_hidden_layers=2,
                expand=2,
                conv_kernel=4,
                time_step_rank=4,
                layer_norm_epsilon=1e-5,
                use_bias=False,
                use_conv_bias=True,
                residual_in_fp32=True,
                tie_word_embeddings=True,
            ),
            save_kwargs={},
        ),
        # Mamba-2, one group, tied embeddings.
        "mamba2": dict(
            seed=1002,
            cls="Mamba2ForCausalLM",
            config=Mamba2Config(
                vocab_size=96,
                hidden_size=32,
                num_heads=8,
                head_dim=8,
                expand=2,
                state_size=16,
                n_groups=1,
                num_hidden_layers=2,
                conv_kernel=4,
                chunk_size=8,
                layer_norm_epsilon=1e-5,
                use_bias=False,
                use_conv_bias=True,
                residual_in_fp32=True,
                tie_word_embeddings=True,
            ),
            save_kwargs={},
        ),
        # Mamba-2, 2 groups of 6 heads, untied, non-default time_step_limit.
        "mamba2_grouped": dict(
            seed=1003,
            cls="Mamba2ForCausalLM",
            config=Mamba2Config(
                vocab_size=72,
                hidden_size=48,
                num_heads=12,
                head_dim=8,
                expand=2,
                state_size=16,
                n_groups=2,
                num_hidden_layers=3,
                conv_kernel=4,
                chunk_size=8,
                time_step_limit=(0.005, 0.05),
                layer_norm_epsilon=1e-5,
                use_bias=False,
                use_conv_bias=True,
                residual_in_fp32=True,
                tie_word_embeddings=False,
            ),
            save_kwargs={},
        ),
        # NemotronH hybrid. Deliberately: Mamba width (8*8=64) != expand*hidden (96)
        # and attention head_dim (16) != hidden/heads (12), so a loader must read
        # mamba_num_heads/mamba_head_dim/head_dim instead of deriving them.
        "nemotron_h": dict(
            seed=1004,
            cls="NemotronHForCausalLM",
            config=NemotronHConfig(
                vocab_size=100,
                hidden_size=48,
                hybrid_override_pattern="M-M*-M",
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                intermediate_size=64,
                mlp_hidden_act="relu2",
                mamba_num_heads=8,
                mamba_head_dim=8,
                n_groups=2,
                ssm_state_size=16,
                conv_kernel=4,
                expand=2,
                chunk_size=8,
                layer_norm_epsilon=1e-5,
                use_bias=False,
                use_conv_bias=True,
                mlp_bias=False,
                attention_bias=False,
                residual_in_fp32=False,
                tie_word_embeddings=False,
            ),
            save_kwargs={},
        ),
        # Llama, GQA, SwiGLU, RoPE theta 1e4, untied, sharded safetensors.
        "llama": dict(
            seed=1005,
            cls="LlamaForCausalLM",
            config=LlamaConfig(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=80,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                hidden_act="silu",
                max_position_embeddings=128,
                rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                attention_bias=False,
                mlp_bias=False,
                tie_word_embeddings=False,
            ),
            save_kwargs={"max_shard_size": "40KB"},
        ),
    }


# ----------------------------------------------------------------------------
# Randomisation
# ----------------------------------------------------------------------------

def _inv_softplus(y):
    return y + np.log(-np.expm1(-y))


def _random_value(name, shape, rng, *, hidden_size, tied):
    """Fixed-seed random value for parameter ``name`` (shape ``shape``), float64."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "A_log":
        # A = -exp(A_log) in [-16, -1] (per head for Mamba-2, per (channel, state) for Mamba-1).
        return np.log(rng.uniform(1.0, 16.0, size=shape))
    if leaf == "D":
        return rng.standard_normal(shape)
    if leaf == "dt_bias" or name.endswith("dt_proj.bias"):
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), size=shape))
        return _inv_softplus(dt)
    if name.endswith("conv1d.weight"):  # [C, 1, K]
        return 0.3 * rng.standard_normal(shape)
    if leaf == "bias":  # conv biases and any other bias
        return 0.2 * rng.standard_normal(shape)
    if len(shape) == 1 and leaf == "weight":  # every RMSNorm weight (incl. the gated one)
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name.endswith("embeddings.weight") or name.endswith("embed_tokens.weight"):
        # Tied: lm_head == embedding, logits ~ 0.2*sqrt(hidden) = O(1).
        return (0.2 if tied else 1.0) * rng.standard_normal(shape)
    if name.endswith("lm_head.weight"):
        return rng.standard_normal(shape) / math.sqrt(hidden_size)
    if len(shape) == 2 and leaf == "weight":  # nn.Linear [out, in]
        gain = 0.5 if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")) else 1.0
        return gain * rng.standard_normal(shape) / math.sqrt(shape[1])
    raise ValueError(f"no randomisation rule for parameter {name} {shape}")


def randomise_(model, seed):
    import torch

    rng = np.random.default_rng(seed)
    cfg = model.config
    tied = bool(cfg.tie_word_embeddings)
    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters are listed once
            if id(p) in seen:
                continue
            seen.add(id(p))
            val = _random_value(name, tuple(p.shape), rng, hidden_size=cfg.hidden_size, tied=tied)
            p.copy_(torch.from_numpy(np.asarray(val, dtype=np.float32)))


# ----------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------

def _check_pure_torch():
    present = [p for p in _KERNEL_PACKAGES if importlib.util.find_spec(p) is not None]
    if present:
        raise SystemExit(
            f"accelerated packages present ({present}); the fixtures must come from the pure-torch "
            "paths. Run in an environment without them."
        )


def _forward_logits(model, ids_np):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids_np.astype(np.int64)), use_cache=False)
    return out.logits.float().numpy()


def make_case(name, spec, out_dir):
    import torch
    import transformers

    torch.manual_seed(spec["seed"])  # construction consumes torch RNG; values are overwritten below
    cls = getattr(transformers, spec["cls"])
    model = cls._from_config(spec["config"], attn_implementation="eager", dtype=torch.float32)
    model.eval()
    randomise_(model, spec["seed"])

    rng = np.random.default_rng(spec["seed"] + 50_000)
    vocab = spec["config"].vocab_size
    ref = {
        "seq_lens": np.asarray(SEQ_LENS, dtype=np.int32),
        "versions": np.asarray(f"torch {torch.__version__}; transformers {transformers.__version__}"),
    }
    for T in SEQ_LENS:
        ids = rng.integers(0, vocab, size=(BATCH, T)).astype(np.int32)
        ref[f"input_ids_T{T}"] = ids
        ref[f"logits_T{T}"] = _forward_logits(model, ids).astype(np.float32)

    case_dir = os.path.join(out_dir, name)
    if os.path.isdir(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)
    model.save_pretrained(case_dir, **spec["save_kwargs"])
    np.savez(os.path.join(case_dir, "reference.npz"), **ref)

    # Round trip: the saved files must reproduce the logits exactly.
    reloaded = cls.from_pretrained(case_dir, attn_implementation="eager", dtype=torch.float32).eval()
    for T in SEQ_LENS:
        got = _forward_logits(reloaded, ref[f"input_ids_T{T}"])
        err = float(np.max(np.abs(got - ref[f"logits_T{T}"])))
        if err > 1e-6:
            raise SystemExit(f"{name}: reloaded model differs from reference at T={T} (max err {err})")
    # The eager and sdpa attention paths agree (documented in HF_NOTES.md).
    extra = ""
    if name in ("llama", "nemotron_h"):
        sdpa = cls.from_pretrained(case_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
        T = SEQ_LENS[-1]
        err = float(np.max(np.abs(_forward_logits(sdpa, ref[f"input_ids_T{T}"]) - ref[f"logits_T{T}"])))
        if err > 1e-4:
            raise SystemExit(f"{name}: sdpa and eager attention disagree ({err})")
        extra = f"  (sdpa vs eager {err:.1e})"

    lg = ref[f"logits_T{SEQ_LENS[-1]}"]
    files = sorted(os.listdir(case_dir))
    size = sum(os.path.getsize(os.path.join(case_dir, f)) for f in files)
    print(f"{name:15s} logits std {lg.std():.3f} max|.| {np.abs(lg).max():.3f}  {size/1024:.1f} KiB{extra}")


# ----------------------------------------------------------------------------
# Independent NumPy reference (reads only the saved files)
# ----------------------------------------------------------------------------

def _json_floats(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _json_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_floats(v) for v in obj]
    return obj


def load_case_files(case_dir):
    from safetensors.numpy import load_file

    with open(os.path.join(case_dir, "config.json")) as f:
        cfg = _json_floats(json.load(f))
    index = os.path.join(case_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    w = {}
    for s in shards:
        w.update({k: v.astype(np.float64) for k, v in load_file(os.path.join(case_dir, s)).items()})
    return cfg, w


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _softplus(x):
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _causal_conv(x, w, b):
    """Depthwise causal conv: x [B, L, C], w [C, 1, K] (cross-correlation, K-1 zeros on the left)."""
    K = w.shape[-1]
    L = x.shape[1]
    xp = np.concatenate([np.zeros((x.shape[0], K - 1, x.shape[2])), x], axis=1)
    out = sum(xp[:, k : k + L, :] * w[:, 0, k] for k in range(K))
    return out + (0.0 if b is None else b)


def _mamba1_mixer(u, p, cfg, swap_xz=False, no_D=False):
    d_in = cfg["intermediate_size"]
    r, n = cfg["time_step_rank"], cfg["state_size"]
    xz = u @ p["in_proj.weight"].T
    x, z = xz[..., :d_in], xz[..., d_in:]  # order [x, z]
    if swap_xz:
        x, z = z, x
    x = _silu(_causal_conv(x, p["conv1d.weight"], p.get("conv1d.bias")))
    dbc = x @ p["x_proj.weight"].T
    dt, Bm, Cm = dbc[..., :r], dbc[..., r : r + n], dbc[..., r + n :]
    dt = _softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])  # [B, L, d_in]
    A = -np.exp(p["A_log"])  # [d_in, n]
    h = np.zeros((u.shape[0], d_in, n))
    ys = []
    for t in range(u.shape[1]):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append(np.einsum("bdn,bn->bd", h, Cm[:, t]))
    y = np.stack(ys, 1) + (0.0 if no_D else p["D"] * x)
    y = y * _silu(z)
    return y @ p["out_proj.weight"].T


def _mamba2_mixer(u, p, *, nheads, headdim, ngroups, dstate, eps, dt_limit, group_map="block",
                  norm_groups=None):
    d_in = nheads * headdim
    conv_dim = d_in + 2 * ngroups * dstate
    zxbcdt = u @ p["in_proj.weight"].T
    if "in_proj.bias" in p:
        zxbcdt = zxbcdt + p["in_proj.bias"]
    z, xBC, dt = zxbcdt[..., :d_in], zxbcdt[..., d_in : d_in + conv_dim], zxbcdt[..., d_in + conv_dim :]
    xBC = _silu(_causal_conv(xBC, p["conv1d.weight"], p.get("conv1d.bias")))
    Bsz, L, _ = u.shape
    x = xBC[..., :d_in].reshape(Bsz, L, nheads, headdim)
    Bm = xBC[..., d_in : d_in + ngroups * dstate].reshape(Bsz, L, ngroups, dstate)
    Cm = xBC[..., d_in + ngroups * dstate :].reshape(Bsz, L, ngroups, dstate)
    g_of_h = np.arange(nheads) // (nheads // ngroups) if group_map == "block" else np.arange(nheads) % ngroups
    Bh, Ch = Bm[:, :, g_of_h], Cm[:, :, g_of_h]  # [B, L, H, N]
    dt = _softplus(dt + p["dt_bias"])
    if dt_limit is not None:
        dt = np.clip(dt, dt_limit[0], dt_limit[1])
    A = -np.exp(p["A_log"])  # [H]
    h = np.zeros((Bsz, nheads, headdim, dstate))
    ys = []
    for t in range(L):
        h = (np.exp(dt[:, t] * A)[:, :, None, None] * h
             + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :])
        ys.append(np.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    y = np.stack(ys, 1) + p["D"][:, None] * x
    y = y.reshape(Bsz, L, d_in) * _silu(z)  # gate first ...
    G = ngroups if norm_groups is None else norm_groups
    yg = y.reshape(Bsz, L, G, d_in // G)  # ... then RMSNorm per group of d_in/ngroups channels
    y = (yg / np.sqrt(np.mean(yg * yg, -1, keepdims=True) + eps)).reshape(Bsz, L, d_in) * p["norm.weight"]
    out = y @ p["out_proj.weight"].T
    if "out_proj.bias" in p:
        out = out + p["out_proj.bias"]
    return out


def _rope(x, theta, interleaved=False):
    """x [B, H, L, hd]; HF (non-interleaved): pair i with i + hd/2."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(x.shape[2])[:, None] * inv[None]  # [L, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        o1, o2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return np.stack([o1, o2], -1).reshape(x.shape)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def _attention(u, p, *, nh, nkv, hd, rope_theta=None, interleaved=False):
    Bsz, L, _ = u.shape
    q = (u @ p["q_proj.weight"].T).reshape(Bsz, L, nh, hd).transpose(0, 2, 1, 3)
    k = (u @ p["k_proj.weight"].T).reshape(Bsz, L, nkv, hd).transpose(0, 2, 1, 3)
    v = (u @ p["v_proj.weight"].T).reshape(Bsz, L, nkv, hd).transpose(0, 2, 1, 3)
    if rope_theta is not None:
        q, k = _rope(q, rope_theta, interleaved), _rope(k, rope_theta, interleaved)
    rep = nh // nkv  # query head j uses kv head j // rep
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    a = (s / s.sum(-1, keepdims=True)) @ v
    return a.transpose(0, 2, 1, 3).reshape(Bsz, L, nh * hd) @ p["o_proj.weight"].T


def _sub(w, prefix):
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


def _lm_head(w, emb_key):
    return w["lm_head.weight"] if "lm_head.weight" in w else w[emb_key]


def numpy_forward(case, cfg, w, ids, **ablate):
    mt = cfg["model_type"]
    if mt in ("mamba", "mamba2"):
        h = w["backbone.embeddings.weight"][ids]
        eps = cfg["layer_norm_epsilon"]
        for i in range(cfg["num_hidden_layers"]):
            p = _sub(w, f"backbone.layers.{i}.mixer.")
            u = _rms(h, w[f"backbone.layers.{i}.norm.weight"], eps)
            if mt == "mamba":
                c = dict(cfg, intermediate_size=cfg["expand"] * cfg["hidden_size"])
                h = h + _mamba1_mixer(u, p, c, swap_xz=ablate.get("swap_xz", False),
                                      no_D=ablate.get("no_D", False))
            else:
                lim = cfg["time_step_limit"]
                h = h + _mamba2_mixer(
                    u, p, nheads=cfg["num_heads"], headdim=cfg["head_dim"], ngroups=cfg["n_groups"],
                    dstate=cfg["state_size"], eps=eps,
                    dt_limit=None if ablate.get("no_dt_clamp") else lim,
                    group_map=ablate.get("group_map", "block"), norm_groups=ablate.get("norm_groups"))
        h = _rms(h, w["backbone.norm_f.weight"], eps)
        return h @ _lm_head(w, "backbone.embeddings.weight").T
    if mt == "nemotron_h":
        eps = cfg["layer_norm_epsilon"]
        h = w["backbone.embeddings.weight"][ids]
        for i, kind in enumerate(cfg["layers_block_type"]):
            p = _sub(w, f"backbone.layers.{i}.mixer.")
            u = _rms(h, w[f"backbone.layers.{i}.norm.weight"], eps)
            if kind == "linear_attention":
                # NemotronH's torch path clamps dt to [time_step_min, inf), whatever time_step_limit says.
                lim = None if ablate.get("no_dt_clamp") else (cfg["time_step_min"], math.inf)
                y = _mamba2_mixer(u, p, nheads=cfg["mamba_num_heads"], headdim=cfg["mamba_head_dim"],
                                  ngroups=cfg["n_groups"], dstate=cfg["ssm_state_size"], eps=eps, dt_limit=lim,
                                  norm_groups=ablate.get("norm_groups"))
            elif kind == "full_attention":
                y = _attention(u, p, nh=cfg["num_attention_heads"], nkv=cfg["num_key_value_heads"],
                               hd=cfg["head_dim"], rope_theta=ablate.get("rope_theta"))
            elif kind == "mlp":
                assert cfg["mlp_hidden_act"] == "relu2"
                y = np.maximum(u @ p["up_proj.weight"].T, 0.0) ** 2 @ p["down_proj.weight"].T
            else:
                raise NotImplementedError(kind)
            h = h + y
        h = _rms(h, w["backbone.norm_f.weight"], eps)
        return h @ _lm_head(w, "backbone.embeddings.weight").T
    if mt == "llama":
        eps = cfg["rms_norm_eps"]
        theta = cfg["rope_parameters"]["rope_theta"]
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        h = w["model.embed_tokens.weight"][ids]
        for i in range(cfg["num_hidden_layers"]):
            pre = f"model.layers.{i}."
            u = _rms(h, w[pre + "input_layernorm.weight"], eps)
            h = h + _attention(u, _sub(w, pre + "self_attn."), nh=cfg["num_attention_heads"],
                               nkv=cfg["num_key_value_heads"], hd=hd, rope_theta=theta,
                               interleaved=ablate.get("interleaved", False))
            u = _rms(h, w[pre + "post_attention_layernorm.weight"], eps)
            m = _sub(w, pre + "mlp.")
            h = h + (_silu(u @ m["gate_proj.weight"].T) * (u @ m["up_proj.weight"].T)) @ m["down_proj.weight"].T
        h = _rms(h, w["model.norm.weight"], eps)
        return h @ _lm_head(w, "model.embed_tokens.weight").T
    raise NotImplementedError(mt)


ABLATIONS = {
    "mamba": {"in_proj split [z, x] instead of [x, z]": dict(swap_xz=True), "D skip dropped": dict(no_D=True)},
    "mamba2": {"norm over 2 groups instead of 1": dict(norm_groups=2)},
    "mamba2_grouped": {
        "no time_step_limit clamp": dict(no_dt_clamp=True),
        "head->group h % G (interleaved) instead of h // (H/G)": dict(group_map="interleaved"),
        "gated norm over all channels (1 group)": dict(norm_groups=1),
    },
    "nemotron_h": {
        "no dt >= time_step_min clamp": dict(no_dt_clamp=True),
        "gated norm over all channels (1 group)": dict(norm_groups=1),
        "RoPE (theta 1e4) added to attention": dict(rope_theta=10000.0),
    },
    "llama": {"interleaved RoPE pairs (2i, 2i+1)": dict(interleaved=True)},
}


def verify(out_dir, names):
    ok = True
    for name in names:
        case_dir = os.path.join(out_dir, name)
        cfg, w = load_case_files(case_dir)
        ref = np.load(os.path.join(case_dir, "reference.npz"))
        worst = 0.0
        for T in ref["seq_lens"]:
            got = numpy_forward(name, cfg, w, ref[f"input_ids_T{T}"].astype(np.int64))
            worst = max(worst, float(np.max(np.abs(got - ref[f"logits_T{T}"]))))
        status = "OK" if worst < 1e-4 else "MISMATCH"
        ok &= worst < 1e-4
        print(f"verify {name:15s} numpy-vs-torch max|dlogits| = {worst:.2e}  {status}")
        T = int(ref["seq_lens"][-1])
        for label, kw in ABLATIONS.get(name, {}).items():
            d = numpy_forward(name, cfg, w, ref[f"input_ids_T{T}"].astype(np.int64), **kw) - ref[f"logits_T{T}"]
            print(f"    sensitivity T={T}: {label}: max|dlogits| = {np.max(np.abs(d)):.2e}")
    return ok


# ----------------------------------------------------------------------------

def main(argv=None):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(repo, "tests", "fixtures", "hf"))
    ap.add_argument("--cases", nargs="*", default=None, help="subset of cases (default: all)")
    ap.add_argument("--verify", action="store_true", help="also check against an independent NumPy forward")
    ap.add_argument("--verify-only", action="store_true", help="only run the NumPy check on existing fixtures")
    args = ap.parse_args(argv)

    all_names = ["mamba", "mamba2", "mamba2_grouped", "nemotron_h", "llama"]
    names = args.cases or all_names
    if not args.verify_only:
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        _check_pure_torch()
        hf_logging.set_verbosity_error()  # silence the "falling back to reference PyTorch" warnings
        hf_logging.disable_progress_bar()
        torch.set_num_threads(1)
        print(f"torch {torch.__version__}, transformers {transformers.__version__}")
        specs = _case_configs()
        os.makedirs(args.out, exist_ok=True)
        for name in names:
            make_case(name, specs[name], args.out)
    if args.verify or args.verify_only:
        if not verify(args.out, names):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
