"""Autoregressive sampling loops, written once for every generative method."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                  top_k: int = 0) -> jax.Array:
  """logits (batch, vocab) -> token ids (batch,). temperature 0 = greedy."""
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def sample_autoregressive(logits_fn: Callable[[jax.Array], jax.Array], prompt: jax.Array,
                          prompt_len: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                          top_k: int = 0) -> jax.Array:
  """Fills a fixed-length token buffer left to right.

  Args:
    logits_fn: tokens (batch, length) -> logits (batch, length, vocab), causal.
    prompt: (batch, length) int buffer whose first `prompt_len` entries are the prompt.
    prompt_len: (batch,) int, at least 1.
  Returns:
    (batch, length) tokens: the prompt followed by samples up to the buffer's end.

  The whole buffer is recomputed every step (no KV cache): simple and exact, and cheap for
  the short sequences of tokenlab's CPU reproductions.
  """
  batch, length = prompt.shape

  def step(t, carry):
    tokens, rng = carry
    rng, sub = jax.random.split(rng)
    logits = logits_fn(tokens)[:, t - 1]
    new = sample_logits(logits, sub, temperature=temperature, top_k=top_k)
    keep = t < prompt_len
    tokens = tokens.at[:, t].set(jnp.where(keep, tokens[:, t], new.astype(tokens.dtype)))
    return tokens, rng

  start = int(jnp.min(prompt_len)) if not isinstance(prompt_len, jax.core.Tracer) else 1
  tokens, _ = jax.lax.fori_loop(max(start, 1), length, step, (prompt, rng))
  return tokens
