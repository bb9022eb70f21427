"""ssmjax.perf.predict_decode: byte accounting against the real caches, and the paper's "up to 8x" decode claim.

The claim test re-derives the bytes of one decode step of the two 8B models by hand from SPEC numbers (parameter
counts §1.6, per-token KV sizes and per-layer state sizes §1.3 / §5.1) and checks that predict_decode agrees and that
the hybrid's speed-up over the Transformer reaches 8x exactly where that arithmetic says.
"""

import math

import jax
import pytest

from ssmjax import perf, presets
from ssmjax.cache import cache_nbytes, init_cache

# SPEC §1.6 parameter counts and the 256,000 x 4096 input embedding (not read whole by a decode step).
HYBRID_PARAMS, TRANSFORMER_PARAMS, EMBEDDING = 8_654_517_248, 8_540_135_424, 256_000 * 4096
KV_BYTES_PER_TOKEN_TRANSFORMER = 32 * 2 * 4096 * 2  # 32 MHA layers, K and V, 32 x 128 values, bf16: 512 KiB
KV_BYTES_PER_TOKEN_HYBRID = 4 * 2 * 8 * 128 * 2  # 4 GQA layers, 8 KV heads of 128, bf16: 16 KiB
STATE_BYTES_PER_SEQUENCE = 24 * (1_048_576 * 4 + 40_960 * 2)  # 24 Mamba layers: fp32 SSM state + bf16 conv state


def _bytes_by_hand(params, kv_per_token, state_per_sequence, batch, context):
  weights = 2 * (params - EMBEDDING) + batch * 4096 * 2
  return weights + batch * (context + 1) * kv_per_token + 2 * batch * state_per_sequence


def _speedup_by_hand(batch, context):
  return (_bytes_by_hand(TRANSFORMER_PARAMS, KV_BYTES_PER_TOKEN_TRANSFORMER, 0, batch, context)
          / _bytes_by_hand(HYBRID_PARAMS, KV_BYTES_PER_TOKEN_HYBRID, STATE_BYTES_PER_SEQUENCE, batch, context))


@pytest.fixture(scope="module")
def models():
  return presets.mamba2_hybrid_8b(), presets.transformer_8b()


@pytest.mark.parametrize("batch, context", [(1, 4096), (8, 32768), (32, 131072)])
def test_predicted_bytes_match_the_hand_count(models, batch, context):
  hybrid, transformer = models
  for config, params, kv, state in ((hybrid, HYBRID_PARAMS, KV_BYTES_PER_TOKEN_HYBRID, STATE_BYTES_PER_SEQUENCE),
                                    (transformer, TRANSFORMER_PARAMS, KV_BYTES_PER_TOKEN_TRANSFORMER, 0)):
    prediction = perf.predict_decode(config, batch, context, "h100")
    assert prediction.bytes_moved == _bytes_by_hand(params, kv, state, batch, context)
    assert prediction.bound == "memory"  # decode at these batch sizes is bandwidth-bound
    assert prediction.step_seconds == pytest.approx(prediction.bytes_moved / 3.35e12)


def test_the_hybrid_is_predicted_up_to_8x_faster_and_where(models):
  hybrid, transformer = models
  # Short context: weights dominate both steps and the two models are about equally fast.
  assert perf.decode_speedup(hybrid, transformer, 1, 4096, "h100") == pytest.approx(1.1, abs=0.05)
  for batch in (1, 8, 32, 128):
    # The crossing by hand: T(c) = 8 H(c) is linear in c; the first multiple of 1,024 at or above it.
    t0, h0 = _bytes_by_hand(TRANSFORMER_PARAMS, KV_BYTES_PER_TOKEN_TRANSFORMER, 0, batch, 0), _bytes_by_hand(
        HYBRID_PARAMS, KV_BYTES_PER_TOKEN_HYBRID, STATE_BYTES_PER_SEQUENCE, batch, 0)
    crossing = (8 * h0 - t0) / (batch * (KV_BYTES_PER_TOKEN_TRANSFORMER - 8 * KV_BYTES_PER_TOKEN_HYBRID))
    expected = math.ceil(crossing / 1024) * 1024
    assert perf.first_context_reaching(8.0, hybrid, transformer, batch, "h100") == expected
    assert perf.decode_speedup(hybrid, transformer, batch, expected, "h100") >= 8.0
    assert perf.decode_speedup(hybrid, transformer, batch, expected - 1024, "h100") < 8.0
    assert _speedup_by_hand(batch, expected) >= 8.0 > _speedup_by_hand(batch, expected - 1024)
  # The README's statement: 8x from about 39K tokens of context at batch 8 and about 13K at batch 32.
  assert 36_000 < perf.first_context_reaching(8.0, hybrid, transformer, 8) < 42_000
  assert 12_000 < perf.first_context_reaching(8.0, hybrid, transformer, 32) < 15_000


def test_the_ratio_does_not_depend_on_the_device_while_memory_bound(models):
  hybrid, transformer = models
  ratios = [perf.decode_speedup(hybrid, transformer, 8, 65536, device) for device in perf.DEVICES]
  assert max(ratios) - min(ratios) < 1e-9
  assert perf.predict_decode(hybrid, 8, 65536, "h200").step_seconds < perf.predict_decode(hybrid, 8, 65536,
                                                                                          "h100").step_seconds


def test_mamba2_step_is_constant_in_context_and_attention_grows():
  mamba2, transformer = presets.mamba2_8b(), presets.transformer_8b()
  assert perf.predict_decode(mamba2, 4, 1024).step_seconds == perf.predict_decode(mamba2, 4, 131072).step_seconds
  t1, t2 = (perf.predict_decode(transformer, 4, c).kv_bytes for c in (1024, 2048))
  assert t2 == pytest.approx(2 * t1, rel=1e-3)


@pytest.mark.parametrize("name", ["tiny_mamba", "tiny_mamba2", "tiny_hybrid"])
def test_state_and_kv_bytes_are_the_real_cache_sizes(name):
  config = presets.get(name)  # float32 caches: pass 4-byte sizes
  batch, context = 3, 40
  prediction = perf.predict_decode(config, batch, context, "tpu_v5e", kv_bytes=4, state_bytes=4, conv_bytes=4)
  cache = jax.eval_shape(lambda: init_cache(config, batch, context))
  recurrent = [layer for layer in cache.layers if layer is not None and not hasattr(layer, "k")]
  attention = [layer for layer in cache.layers if hasattr(layer, "k")]
  assert prediction.state_bytes == 2 * cache_nbytes(recurrent)
  assert prediction.kv_bytes == cache_nbytes(attention) * (context + 1) / context


def test_unknown_device_and_bad_sizes_are_rejected():
  config = presets.get("tiny_mamba2")
  with pytest.raises(ValueError, match="unknown device 'a100'; known devices: h100"):
    perf.predict_decode(config, 1, 10, "a100")
  with pytest.raises(ValueError, match="need batch >= 1"):
    perf.predict_decode(config, 0, 10)
