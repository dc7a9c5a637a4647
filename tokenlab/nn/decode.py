"""Cached autoregressive decoding: prefill the prompt once, then one token per step.

The uncached loop (`tokenlab.nn.generate.sample_autoregressive`) recomputes the whole buffer
at every step, O(length) forwards of O(length) tokens each. Here a model in decode mode (e.g.
`TransformerStack(decode=True)`, whose attention layers keep keys/values in the Flax "cache"
collection, see `tokenlab.nn.attention.MultiHeadAttention`) is fed the prompt's first
min(prompt_len) tokens in one call and then one token per step.

The semantics are `sample_autoregressive`'s, step for step: position t is sampled from the
logits at t - 1 given tokens[:, :t], rows keep their own prompt tokens where t < prompt_len,
and the rng is split once per visited position in the same order, so for the same params and
rng the two loops give the same tokens (exactly under greedy decoding; when sampling, up to
float rounding of the logits).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.generate import sample_guided

PyTree = Any
# (tokens (batch, n), cache) -> (logits (batch, n, vocab), cache advanced by n positions)
StepFn = Callable[[jax.Array, PyTree], tuple[jax.Array, PyTree]]


def init_cache(module: nn.Module, batch: int, cache_len: int) -> PyTree:
  """An empty cache (zeros, index 0) for `module` (in decode mode, tokens -> logits).

  The cache's shapes come from an abstract `init` on a (batch, cache_len) token buffer, so no
  parameters are computed.
  """
  tokens = jax.ShapeDtypeStruct((batch, cache_len), jnp.int32)
  shapes = jax.eval_shape(lambda t: module.init(jax.random.key(0), t), tokens)
  if "cache" not in shapes:
    raise ValueError(f"{type(module).__name__} made no 'cache' collection; is it in decode mode?")
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def module_step_fn(module: nn.Module, params: PyTree) -> StepFn:
  """The StepFn of a decode-mode module called as module.apply(variables, tokens)."""
  def step(tokens: jax.Array, cache: PyTree) -> tuple[jax.Array, PyTree]:
    logits, updated = module.apply({"params": params, "cache": cache}, tokens,
                                   mutable=["cache"])
    return logits, updated["cache"]
  return step


def cache_length(cache: PyTree) -> int:
  """Positions the cache holds: the length axis of its `cached_key` arrays
  ((batch, max_len, kv_heads, head_dim), with a leading layers axis under scan)."""
  lengths = [leaf.shape[-3] for path, leaf in jax.tree_util.tree_flatten_with_path(cache)[0]
             if getattr(path[-1], "key", None) == "cached_key"]
  if not lengths:
    raise ValueError("the cache has no 'cached_key' arrays (see MultiHeadAttention decode)")
  return min(lengths)


def sample_cached(step_fn: StepFn, cache: PyTree, prompt: jax.Array, prompt_len: jax.Array,
                  rng: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  start: int | None = None,
                  cfg_scale: float | jax.Array | None = None) -> jax.Array:
  """Fills a fixed-length token buffer left to right with a key/value cache.

  Args:
    step_fn: see `StepFn`; causal, the cache holding the positions fed so far.
    cache: an empty cache (see `init_cache`) at least as long as the buffer.
    prompt: (batch, length) int buffer whose first `prompt_len` entries are the prompt.
    prompt_len: (batch,) int, at least 1.
    start: as in `sample_autoregressive`: the first position sampled (static). Default:
      min(prompt_len) when prompt_len is concrete, else 1. The first `start` tokens are
      prefilled in one call.
    cfg_scale: None, or classifier-free guidance over [conditional; null] rows, as in
      `sample_autoregressive` (both halves advance one cache, as one batch).
  Returns:
    (batch, length) tokens: the prompt followed by samples up to the buffer's end.
  Raises:
    ValueError: the buffer is longer than the cache.
  """
  batch, length = prompt.shape
  if (capacity := cache_length(cache)) < length:
    raise ValueError(f"the token buffer ({length} positions) exceeds the cache length "
                     f"({capacity}); make the cache at least as long as the buffer")
  if start is None:
    start = 1 if isinstance(prompt_len, jax.core.Tracer) else int(np.min(prompt_len))
  start = max(start, 1)
  if start >= length:
    return prompt

  def emit(t, tokens, logits, rng):
    """Writes position t from the logits (batch, vocab) at t - 1, keeping prompt tokens."""
    rng, sub = jax.random.split(rng)
    new = sample_guided(logits, sub, temperature=temperature, top_k=top_k,
                        cfg_scale=cfg_scale)
    keep = t < prompt_len
    tokens = tokens.at[:, t].set(jnp.where(keep, tokens[:, t], new.astype(tokens.dtype)))
    return tokens, rng

  logits, cache = step_fn(prompt[:, :start], cache)                   # prefill
  tokens, rng = emit(start, prompt, logits[:, -1], rng)

  def step(t, carry):
    tokens, cache, rng = carry
    logits, cache = step_fn(jax.lax.dynamic_slice_in_dim(tokens, t - 1, 1, axis=1), cache)
    tokens, rng = emit(t, tokens, logits[:, 0], rng)
    return tokens, cache, rng

  tokens, _, _ = jax.lax.fori_loop(start + 1, length, step, (tokens, cache, rng))
  return tokens


def sample_module_cached(module: nn.Module, params: PyTree, prompt: jax.Array,
                         prompt_len: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                         top_k: int = 0, start: int | None = None,
                         cache_len: int | None = None,
                         cfg_scale: float | jax.Array | None = None) -> jax.Array:
  """`sample_cached` for a decode-mode module (tokens -> logits) with a fresh cache of
  `cache_len` positions (default: the buffer's length)."""
  cache = init_cache(module, prompt.shape[0], cache_len or prompt.shape[1])
  return sample_cached(module_step_fn(module, params), cache, prompt, prompt_len, rng,
                       temperature=temperature, top_k=top_k, start=start, cfg_scale=cfg_scale)
