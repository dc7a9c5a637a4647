"""KV-cache decoding (tokenlab/nn/decode.py + MultiHeadAttention decode mode): the same tokens
and logits as the uncached forward, and a training forward left as it was."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.method import random_params
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.nn.decode import init_cache, module_step_fn, sample_module_cached

BASE = dict(vocab_size=40, d_model=32, num_layers=2, num_heads=4)
CONFIGS = {
    "gqa": dict(num_kv_heads=2),
    "window_gqa": dict(num_kv_heads=2, window=(3, 0)),
    "scan_window_gqa": dict(num_kv_heads=2, window=(4, 0), scan_layers=True),
}


def _method(name: str) -> tuple[TransformerLM, dict]:
  method = TransformerLM(TransformerLMConfig(**BASE, **CONFIGS[name]))
  return method, random_params(method, {"inputs": np.zeros((3, 12), np.int32)})


def _buffer(batch=3, length=12, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 40, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_cached_equals_uncached_with_ragged_prompts(name):
  method, params = _method(name)
  buf, prompt_len = _buffer(), np.array([2, 5, 3])
  run = lambda cached: np.asarray(jax.jit(lambda p, b, r: method.sample(
      p, b, prompt_len, r, temperature=0.0, cached=cached))(params, buf, jax.random.key(1)))
  cached, uncached = run(True), run(False)
  np.testing.assert_array_equal(cached, uncached)  # token ids: exact (logits: see below)
  for row, n in enumerate(prompt_len):   # prompts kept, and something was generated
    np.testing.assert_array_equal(cached[row, :n], buf[row, :n])
  assert not np.array_equal(cached[:, 5:], buf[:, 5:])


def test_sampling_splits_the_rng_like_the_uncached_loop():
  method, params = _method("gqa")
  buf, prompt_len = _buffer(), np.array([4, 1, 6])
  run = lambda cached: np.asarray(jax.jit(lambda p, b, r: method.sample(
      p, b, prompt_len, r, temperature=1.0, top_k=8, cached=cached))(params, buf,
                                                                      jax.random.key(7)))
  np.testing.assert_array_equal(run(True), run(False))


@pytest.mark.parametrize("name", ["window_gqa", "scan_window_gqa"])
def test_per_step_cached_logits_match_the_full_forward(name):
  """Prefill 3 tokens, then one per step: each step's logits are the full causal forward's
  logits at that position (windows of 3/4 < 12 tokens, so keys do fall out of the window)."""
  method, params = _method(name)
  tokens = jnp.asarray(_buffer())
  full = np.asarray(method.logits(params, {"inputs": tokens}))
  decoder = method.module.clone(decode=True)
  cache = init_cache(decoder, 3, 12)
  step = jax.jit(module_step_fn(decoder, params))
  logits, cache = step(tokens[:, :3], cache)
  np.testing.assert_allclose(np.asarray(logits), full[:, :3], atol=1e-5)
  for t in range(3, 12):
    logits, cache = step(tokens[:, t:t + 1], cache)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, t], atol=1e-5,
                               err_msg=f"position {t}")
  index = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(cache)[0]
           if "cache_index" in jax.tree_util.keystr(path)]
  assert index and all(np.all(np.asarray(i) == 12) for i in index)


# Logits of the training forward computed with the code before decode mode existed (commit
# 9e80f02; the full logits and all parameter gradients were also checked bit for bit against
# that commit).
GOLDEN = {
    "gqa": (dict(num_kv_heads=2),
            [[0.27250132, -0.04716127, -0.03476866, 0.7160412],
             [0.21716902, -0.24186014, 0.25425655, 0.7116216],
             [0.3183046, -0.06005203, -0.2865527, -0.02617307]],
            [-7.6808460e-02, 6.3705171e-04, -2.3978131e-01, 6.8917024e-01]),
    "scan_remat_window": (
        dict(num_kv_heads=2, scan_layers=True, remat="full", window=(3, 0)),
        [[0.32878417, -0.03574095, 0.5803316, -0.17884734],
         [0.1669652, -0.47684297, 0.64990413, -0.7490054],
         [0.24571419, -0.32160598, 0.2264149, -0.55450714]],
        [0.04078789, -0.09881578, 0.37863433, -0.3617434]),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_training_forward_is_unchanged(name):
  kw, first, last = GOLDEN[name]
  method = TransformerLM(TransformerLMConfig(**BASE, **kw))
  x = np.random.default_rng(0).integers(0, 40, (2, 10)).astype(np.int32)
  params = random_params(method, {"inputs": x})
  logits = np.asarray(jax.jit(method.logits)(params, {"inputs": x}))
  np.testing.assert_allclose(logits[0, :3, :4], np.array(first), atol=1e-6)
  np.testing.assert_allclose(logits[1, -1, :4], np.array(last), atol=1e-6)
  # Decode mode has the very same parameters (a trained checkpoint decodes as is) and the
  # training forward makes no cache.
  decoder = method.module.clone(decode=True)
  shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), jnp.asarray(x)))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), nn.unbox(shapes["params"])) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), params)
  assert "cache" not in jax.eval_shape(lambda: method.module.init(jax.random.key(0), x))


def test_buffer_longer_than_the_cache_is_an_error():
  method, params = _method("gqa")
  decoder = method.module.clone(decode=True)
  with pytest.raises(ValueError, match="exceeds the cache length"):
    sample_module_cached(decoder, params, jnp.asarray(_buffer()), np.array([2, 2, 2]),
                         jax.random.key(0), cache_len=8)
  with pytest.raises(ValueError, match="exceeds the cache length"):  # one call too long
    cache = init_cache(decoder, 3, 4)
    module_step_fn(decoder, params)(jnp.asarray(_buffer())[:, :6], cache)
