"""ssmjax -> HF transformers export: exact round trips (torch-free), refusals, and transformers' logits on the exports.

Each case converts a fixture to ssmjax parameters, exports them, and re-imports the export with the HF loader: the
parameters must come back bit for bit and the config identical in every field that affects the forward pass (fields
that only matter for initialisation, such as ``dt_min`` or ``init_std``, are not all representable in HF configs).
The transformers tests (skipped without transformers) load each export with ``AutoModelForCausalLM`` and compare its
logits with the fixture's reference logits (which ssmjax matches) and, marked slow, with ssmjax's own.
"""

import dataclasses
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

import ssmjax
from ssmjax.convert import export_hf
from ssmjax.convert.tensors import INDEX_FILE, TensorReader

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
# (fixture, HF model_type of the export, reference logits key)
CASES = {
    "hf/mamba": ("mamba", "logits"),
    "hf/mamba2_grouped": ("mamba2", "logits"),
    "hf/nemotron_h": ("nemotron_h", "logits"),
    "hf/llama": ("llama", "logits"),
    "megatron/hybrid": ("nemotron_h", "logits_noclamp"),
    "mamba_ssm/mamba2": ("mamba2", "logits"),
    "mamba_ssm/mamba1": ("mamba", "logits"),
}
INIT_ONLY = {"init_style", "init_std", "init_depth", "dt_min", "dt_max", "dt_init_floor", "dt_scale", "A_init_range"}


def forward_fields(config):
  """The config as a dict without the fields that only affect initialisation, with derived sizes resolved."""
  d = config.d_model
  resolved = {"mamba2": {"nheads": config.mamba2.resolved_nheads(d), "expand": None},
              "attention": {"num_kv_heads": config.attention.resolved_kv_heads(),
                            "head_dim": config.attention.resolved_head_dim(d)}}

  def strip(name, value):
    if dataclasses.is_dataclass(value):
      fields = {k: v for k, v in dataclasses.asdict(value).items() if k not in INIT_ONLY}
      return {**fields, **resolved.get(name, {})}
    return value
  return {k: strip(k, getattr(config, k)) for k in config.__dataclass_fields__ if k not in INIT_ONLY}


def _export(case, tmp_path, **kwargs):
  config, params = ssmjax.load_pretrained(os.path.join(FIXTURES, case))
  directory = tmp_path / case.replace("/", "_")
  directory.mkdir()
  files = export_hf.export_hf(config, params, str(directory), **kwargs)
  return config, params, directory, files


@pytest.mark.parametrize("case", CASES)
def test_round_trip_is_exact(case, tmp_path):
  config, params, directory, _ = _export(case, tmp_path)
  with open(directory / "config.json") as f:
    assert json.load(f)["model_type"] == CASES[case][0]
  assert ssmjax.convert.detect_format(str(directory)) == "hf"
  back_config, back_params = ssmjax.load_pretrained(str(directory))
  assert forward_fields(back_config) == forward_fields(config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back_params, params)


def test_sharded_bfloat16_export_round_trips(tmp_path):
  config, params, directory, files = _export("hf/llama", tmp_path, dtype="bfloat16", max_shard_bytes=20_000)
  assert INDEX_FILE in files and len([f for f in files if f.endswith(".safetensors")]) > 2
  reader = TensorReader(str(directory))
  assert reader.take("model.embed_tokens.weight").dtype == ml_dtypes.bfloat16
  _, back = ssmjax.load_pretrained(str(directory), dtype="source")
  jax.tree_util.tree_map(lambda b, p: np.testing.assert_array_equal(b, np.asarray(p).astype(ml_dtypes.bfloat16)),
                         back, params)


@pytest.mark.parametrize("case, problems", [
    ("megatron/gpt", ["norm 'layernorm_1p'", "rotary_fraction 0.5", "mlp.activation 'squared_relu'"]),
    ("mamba_ssm/mamba2attn", ["rotary_fraction 0.5", "attention biases", "mlp.activation 'swiglu'"]),
    ("mamba_ssm/mamba1_mlp_layernorm", ["norm 'layernorm'", "mamba_version 1", "mlp.activation 'swiglu'"]),
    ("mamba_ssm/mamba2attn_conv", ["attention.d_conv 4", "rotary_fraction 0.5"]),
])
def test_configs_hf_cannot_represent_are_refused_naming_every_reason(case, problems, tmp_path):
  config, params = ssmjax.load_pretrained(os.path.join(FIXTURES, case))
  with pytest.raises(ValueError, match="cannot export to HF") as error:
    export_hf.export_hf(config, params, str(tmp_path))
  for problem in problems:
    assert problem in str(error.value)
  assert os.listdir(tmp_path) == []  # refused before anything is written


def _transformers_logits(directory, reference):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                                            attn_implementation="eager").eval()
  logits = {}
  for length in reference["seq_lens"]:
    with torch.no_grad():
      ids = torch.from_numpy(reference[f"input_ids_T{length}"].astype(np.int64))
      logits[int(length)] = model(input_ids=ids, use_cache=False).logits.float().numpy()
  return logits


@pytest.mark.parametrize("case", CASES)
def test_transformers_loads_the_export_with_the_reference_logits(case, tmp_path):
  # ssmjax matches these reference logits to 1e-4 (test_hf, test_mamba_ssm, test_megatron).
  _, _, directory, _ = _export(case, tmp_path)
  reference = np.load(os.path.join(FIXTURES, case, "reference.npz"))
  for length, logits in _transformers_logits(directory, reference).items():
    np.testing.assert_allclose(logits, reference[f"{CASES[case][1]}_T{length}"], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_transformers_logits_on_the_export_equal_ssmjax_logits(case, tmp_path, logit_error):
  config, params, directory, _ = _export(case, tmp_path)
  reference = np.load(os.path.join(FIXTURES, case, "reference.npz"))
  hf_logits = _transformers_logits(directory, reference)
  np.savez(tmp_path / "reference.npz", seq_lens=reference["seq_lens"],
           **{f"input_ids_T{t}": reference[f"input_ids_T{t}"] for t in hf_logits},
           **{f"logits_T{t}": v for t, v in hf_logits.items()})
  assert logit_error(config, params, str(tmp_path)) < 1e-4
