"""ssmjax.generate: greedy decoding equals repeated argmax of the full forward; mixed prompt lengths equal one-by-one
generation; sampling is reproducible from the seed and respects top-k / top-p; EOS stops each sequence; streaming.

The reference for greedy decoding runs no cache at all: each prompt sits at the start of a right-padded buffer and the
full forward is recomputed after every token (causality makes the buffer's tail irrelevant, so one compiled forward
serves every prompt length and step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmjax
from ssmjax.config import AttentionConfig
from ssmjax.generate import SamplingSettings, left_pad, sample_logits

# tiny_hybrid with RoPE on half of each head, so that per-sequence positions matter under left padding.
ROPE_HYBRID = {"attention": AttentionConfig(num_heads=4, num_kv_heads=2, rotary_fraction=0.5)}


def _prompts(lengths, vocab, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, vocab, n).astype(np.int32) for n in lengths]


def _greedy_reference(fns, config, params, prompts, num_tokens):
  """(tokens (B, N), logits (B, N, V)) by argmax of the uncached full forward, one token at a time."""
  buffer = np.zeros((len(prompts), max(len(p) for p in prompts) + num_tokens), np.int32)
  for row, p in enumerate(prompts):
    buffer[row, :len(p)] = p
  tokens = np.zeros((len(prompts), num_tokens), np.int32)
  logits = np.zeros((len(prompts), num_tokens, config.vocab_size), np.float32)
  for step in range(num_tokens):
    all_logits = np.asarray(fns.full(config, params, jnp.asarray(buffer)))
    for row, p in enumerate(prompts):
      last = len(p) + step - 1
      logits[row, step] = all_logits[row, last]
      tokens[row, step] = buffer[row, last + 1] = all_logits[row, last].argmax()
  return tokens, logits


@pytest.mark.parametrize("name, overrides", [("tiny_hybrid", ROPE_HYBRID), ("tiny_mamba", {})],
                         ids=["rope_hybrid", "mamba1"])
def test_greedy_generate_matches_repeated_argmax_of_the_full_forward(tiny_model, model_fns, name, overrides):
  config, params = tiny_model(name, **overrides)
  prompts = _prompts([7, 7], config.vocab_size)
  out = ssmjax.generate(config, params, np.stack(prompts), 6, return_logits=True)
  tokens, logits = _greedy_reference(model_fns, config, params, prompts, 6)
  np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
  np.testing.assert_allclose(np.asarray(out.logits), logits, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(out.lengths), [6, 6])


@pytest.mark.parametrize("name, overrides", [("tiny_hybrid", ROPE_HYBRID), ("tiny_mamba", {})],
                         ids=["rope_hybrid", "mamba1"])
def test_mixed_prompt_lengths_match_the_uncached_reference(tiny_model, model_fns, name, overrides):
  config, params = tiny_model(name, **overrides)
  prompts = _prompts([3, 9, 17], config.vocab_size, seed=1)  # 17 > the chunk length 16
  out = ssmjax.generate(config, params, prompts, 5, return_logits=True)
  tokens, logits = _greedy_reference(model_fns, config, params, prompts, 5)
  np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
  np.testing.assert_allclose(np.asarray(out.logits), logits, atol=1e-4, rtol=0)


def test_a_single_new_token_is_the_argmax_after_each_prompt(tiny_model, model_fns):
  # The loop draws all tokens but the last; the last is drawn after it (no step follows): here the loop never runs.
  config, params = tiny_model("tiny_mamba2")
  prompts = np.stack(_prompts([6, 6], config.vocab_size, seed=5))
  out = ssmjax.generate(config, params, prompts, 1, return_logits=True)
  last = np.asarray(model_fns.full(config, params, jnp.asarray(prompts)))[:, -1]
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], last.argmax(-1))
  np.testing.assert_allclose(np.asarray(out.logits)[:, 0], last, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(out.lengths), [1, 1])


def _check_batch_equals_one_by_one(config, params, prompts, num_tokens):
  batched = ssmjax.generate(config, params, prompts, num_tokens, return_logits=True)
  for row, prompt in enumerate(prompts):
    alone = ssmjax.generate(config, params, [prompt], num_tokens, return_logits=True)
    np.testing.assert_array_equal(np.asarray(batched.tokens[row]), np.asarray(alone.tokens[0]), err_msg=f"row {row}")
    np.testing.assert_allclose(np.asarray(batched.logits[row]), np.asarray(alone.logits[0]), atol=1e-4, rtol=0)


def test_batches_with_different_prompt_lengths_give_the_tokens_of_one_by_one_generation(tiny_model):
  config, params = tiny_model("tiny_hybrid", **ROPE_HYBRID)
  _check_batch_equals_one_by_one(config, params, _prompts([3, 9, 17], config.vocab_size, seed=1), 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_mamba", "tiny_mamba2", "tiny_transformer", "tiny_llama", "tiny_hybrid"])
def test_one_by_one_every_preset(tiny_model, name):
  config, params = tiny_model(name)
  _check_batch_equals_one_by_one(config, params, _prompts([1, 6, 18], config.vocab_size, seed=2), 6)


def test_sampling_is_reproducible_from_the_seed_and_stays_in_the_top_k(tiny_model):
  config, params = tiny_model("tiny_hybrid")
  prompts = np.stack(_prompts([5, 5], config.vocab_size))
  run = lambda seed: ssmjax.generate(config, params, prompts, 8, temperature=1.0, top_k=20, seed=seed,
                                     return_logits=True)
  first, again, other = run(0), run(0), run(1)
  np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
  assert not np.array_equal(np.asarray(first.tokens), np.asarray(other.tokens))
  for out in (first, other):
    logits, tokens = np.asarray(out.logits), np.asarray(out.tokens)
    kth = np.sort(logits, axis=-1)[..., -20]
    assert (np.take_along_axis(logits, tokens[..., None], -1)[..., 0] >= kth).all()
  greedy = ssmjax.generate(config, params, prompts, 8)
  assert not np.array_equal(np.asarray(first.tokens), np.asarray(greedy.tokens))  # it does sample


def _draws(logits, settings, n=4000):
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (1, len(logits)))
  tokens = jax.jit(jax.vmap(lambda k: sample_logits(batch, k, settings)[0]))(keys)
  return np.bincount(np.asarray(tokens), minlength=len(logits)) / n


def test_sample_logits_temperature_top_k_top_p():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  logits = np.log(probs)
  assert int(sample_logits(jnp.asarray(logits)[None], jax.random.PRNGKey(0), SamplingSettings())[0]) == 0
  np.testing.assert_allclose(_draws(logits, SamplingSettings(1.0)), probs, atol=0.03)
  sharpened = probs**2 / (probs**2).sum()  # temperature 0.5 squares the probabilities
  np.testing.assert_allclose(_draws(logits, SamplingSettings(0.5)), sharpened, atol=0.03)
  np.testing.assert_allclose(_draws(logits, SamplingSettings(1.0, top_k=2)), [0.625, 0.375, 0, 0], atol=0.03)
  np.testing.assert_array_equal(_draws(logits, SamplingSettings(3.0, top_k=1), n=200), [1, 0, 0, 0])
  # top_p 0.7: token 1 is kept (0.5 precedes it), token 2 is not (0.8 precedes it).
  np.testing.assert_allclose(_draws(logits, SamplingSettings(1.0, top_p=0.7)), [0.625, 0.375, 0, 0], atol=0.03)
  np.testing.assert_allclose(_draws(logits, SamplingSettings(1.0, top_p=0.85)), [0.526, 0.316, 0.158, 0], atol=0.03)


def test_eos_stops_each_sequence_and_on_step_streams_the_tokens(tiny_model):
  config, params = tiny_model("tiny_hybrid")
  prompts = _prompts([4, 6], config.vocab_size, seed=3)
  free = np.asarray(ssmjax.generate(config, params, prompts, 8).tokens)
  eos = int(free[0, 2])
  streamed = []
  out = ssmjax.generate(config, params, prompts, 8, eos_id=eos,
                        on_step=lambda step, tokens, active: streamed.append((int(step), np.array(tokens),
                                                                                np.array(active))))
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for row in range(2):
    hits = np.flatnonzero(free[row] == eos)
    expected_length = hits[0] + 1 if hits.size else 8
    assert lengths[row] == expected_length
    np.testing.assert_array_equal(tokens[row, :expected_length], free[row, :expected_length])
    assert (tokens[row, expected_length:] == eos).all()
  assert [s for s, _, _ in streamed] == list(range(len(streamed)))
  assert len(streamed) == lengths.max()  # the loop ends once every sequence is done
  for step, step_tokens, active in streamed:
    np.testing.assert_array_equal(step_tokens, tokens[:, step])
    np.testing.assert_array_equal(active, step < lengths)


def test_left_pad():
  ids, offsets = left_pad([[5, 6, 7], [8]], vocab_size=10)
  np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8]])
  np.testing.assert_array_equal(offsets, [0, 2])
  ids, offsets = left_pad(np.array([[1, 2], [3, 4]]), vocab_size=10)
  np.testing.assert_array_equal(offsets, [0, 0])


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt_ids": [[1, 2], []]}, r"prompt_ids\[1\] must be a non-empty"),
    ({"prompt_ids": [[1, 512]]}, r"outside \[0, vocab_size=512\)"),
    ({"prompt_ids": "hello"}, "prompt_ids must be"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive int"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"top_k": 0}, "top_k must be a positive int"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"eos_id": 512}, r"eos_id must be in \[0, vocab_size=512\)"),
])
def test_generate_rejects_bad_arguments(tiny_model, kwargs, message):
  config, params = tiny_model("tiny_mamba2")
  args = {"prompt_ids": [[1, 2, 3]], "max_new_tokens": 2} | kwargs
  with pytest.raises(ValueError, match=message):
    ssmjax.generate(config, params, args.pop("prompt_ids"), args.pop("max_new_tokens"), **args)


@pytest.mark.slow
def test_bfloat16_generation_keeps_fp32_state_and_agrees_with_its_full_forward(tiny_model, model_fns):
  config, params = tiny_model("tiny_hybrid")
  config = config.replace(dtype="bfloat16")
  prompts = _prompts([6, 6], config.vocab_size, seed=4)
  out = ssmjax.generate(config, params, np.stack(prompts), 4, return_logits=True)
  _, reference = _greedy_reference(model_fns, config, params, prompts, 4)
  # Same tokens are not guaranteed in bf16; the logits the tokens were drawn from must be close to the forward's.
  np.testing.assert_allclose(np.asarray(out.logits[:, 0]), reference[:, 0], atol=0.1, rtol=0)
  assert np.isfinite(np.asarray(out.logits)).all()
