"""Sampling loops (left to right, masked-diffusion unmasking, insertion), written once for every
generative method."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


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


def guided_logits(logits: jax.Array, cfg_scale: float | jax.Array) -> jax.Array:
  """Classifier-free guidance (Ho & Salimans 2022) of a batch run as [conditional; null].

  logits: (2B, ...), the first B rows conditioned, the last B rows the same inputs with the
  null class. Returns (B, ...) null + cfg_scale * (cond - null) in float32: scale 1 is the
  conditional model, 0 the unconditional one, > 1 pushes samples toward the class. An entry
  that is -inf in both halves (a token masked out of the vocabulary) stays -inf.
  """
  if logits.shape[0] % 2:
    raise ValueError(f"classifier-free guidance needs a [conditional; null] batch of even "
                     f"size, got {logits.shape[0]} rows")
  cond, null = jnp.split(logits.astype(jnp.float32), 2, axis=0)
  # -inf - -inf is NaN: a token excluded on both sides keeps null's -inf.
  excluded = jnp.logical_and(jnp.isneginf(cond), jnp.isneginf(null))
  return null + cfg_scale * jnp.where(excluded, 0.0, cond - null)


def sample_guided(logits: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                  top_k: int = 0, cfg_scale: float | jax.Array | None = None) -> jax.Array:
  """`sample_logits`, with classifier-free guidance when cfg_scale is not None.

  logits (rows, vocab) -> (rows,) ids. With guidance the rows are [conditional; null] (see
  `guided_logits`): one token is drawn per pair from the guided logits and written to both
  rows, so the two halves of the batch keep decoding the same image.
  """
  if cfg_scale is None:
    return sample_logits(logits, rng, temperature=temperature, top_k=top_k)
  new = sample_logits(guided_logits(logits, cfg_scale), rng, temperature=temperature,
                      top_k=top_k)
  return jnp.concatenate([new, new], axis=0)


def sample_autoregressive(logits_fn: Callable[[jax.Array], jax.Array], prompt: jax.Array,
                          prompt_len: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                          top_k: int = 0, start: int | None = None,
                          cfg_scale: float | jax.Array | None = None) -> jax.Array:
  """Fills a fixed-length token buffer left to right.

  Args:
    logits_fn: tokens (batch, length) -> logits (batch, length, vocab), causal.
    prompt: (batch, length) int buffer whose first `prompt_len` entries are the prompt.
    prompt_len: (batch,) int, at least 1.
    start: the first position the loop visits (static; positions before every row's
      prompt_len are kept anyway). Default: min(prompt_len) when prompt_len is concrete
      (numpy or a concrete array), else 1. Pass it when prompt_len is traced but its
      minimum is known, to skip the prompt's steps.
    cfg_scale: None, or classifier-free guidance: the buffer's rows are [conditional; null]
      (e.g. a class prefix token, then the same rows with the null class), see
      `sample_guided`.
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
    new = sample_guided(logits, sub, temperature=temperature, top_k=top_k, cfg_scale=cfg_scale)
    keep = t < prompt_len
    tokens = tokens.at[:, t].set(jnp.where(keep, tokens[:, t], new.astype(tokens.dtype)))
    return tokens, rng

  if start is None:
    start = 1 if isinstance(prompt_len, jax.core.Tracer) else int(np.min(prompt_len))
  tokens, _ = jax.lax.fori_loop(max(start, 1), length, step, (prompt, rng))
  return tokens


def sample_unmasking(logits_fn: Callable[[jax.Array], jax.Array], tokens: jax.Array,
                     mask_id: int, rng: jax.Array, *, steps: int, temperature: float = 0.0
                     ) -> jax.Array:
  """Masked-diffusion decoding, one position per step: the most confident masked position.

  Args:
    logits_fn: tokens (batch, length) -> logits (batch, length, vocab), bidirectional.
    tokens: (batch, length) with `mask_id` at the positions to fill.
    steps: how many positions to fill (at most; rows with nothing masked stay as they are).
    temperature: 0 = each position's argmax; > 0 samples its token (see `sample_logits`).
  Returns:
    (batch, length) tokens.

  Confidence = the probability of the token chosen for a position; unmasking one token at a
  time in order of confidence lets the model fill the easy positions first (no two tokens
  decided jointly, so no incoherent pairs).
  """
  batch, length = tokens.shape

  def step(_, carry):
    tokens, rng = carry
    rng, sub = jax.random.split(rng)
    logits = logits_fn(tokens).astype(jnp.float32)
    logits = logits.at[..., mask_id].set(-jnp.inf)     # never "predict" the mask itself
    flat = logits.reshape(batch * length, -1)
    choice = sample_logits(flat, sub, temperature=temperature).reshape(batch, length)
    logp = jax.nn.log_softmax(logits, -1)
    conf = jnp.take_along_axis(logp, choice[..., None], -1)[..., 0]
    masked = tokens == mask_id
    pos = jnp.argmax(jnp.where(masked, conf, -jnp.inf), axis=-1)
    fill = jnp.logical_and(jnp.arange(length)[None] == pos[:, None], masked)
    return jnp.where(fill, choice.astype(tokens.dtype), tokens), rng

  tokens, _ = jax.lax.fori_loop(0, steps, step, (tokens, rng))
  return tokens


def sample_insertions(step_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
                      tokens: jax.Array, length: jax.Array, first_slot: jax.Array,
                      rng: jax.Array, *, max_insertions: int, temperature: float = 0.0,
                      stop_threshold: float = 0.5) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Insertion decoding: insert one (slot, token) per step until the model says stop.

  Args:
    step_fn: tokens (batch, L) -> (insertion logits (batch, L, vocab) over (slot, token),
      slot s = after token s, see tokenlab.nn.corruption; stop logits (batch,)).
    tokens: (batch, L) buffer whose first `length` entries are the sequence so far (the rest
      padding); it must have room for the insertions.
    length: (batch,) int; first_slot: (batch,) int, the first slot insertions may use (e.g.
      the prompt's last token: nothing is inserted into the prompt).
    max_insertions: number of steps; a row whose buffer is full stops. The stop decision
      comes before each step's insertion, so n insertions and a stop need n + 1 steps.
    temperature: 0 = the joint argmax and stop iff P(stop) > stop_threshold; > 0 samples
      (slot, token) jointly and the stop decision.
  Returns:
    (tokens, length, stopped (batch,) bool: the model chose to stop, not the step budget or
    a full buffer).
  """
  from tokenlab.nn.corruption import insert_token
  batch, size = tokens.shape

  def step(_, carry):
    tokens, length, stopped, rng = carry
    rng, r_stop, r_pick = jax.random.split(rng, 3)
    logits, stop_logit = step_fn(tokens)
    vocab = logits.shape[-1]
    slots = jnp.arange(size)[None]
    valid = jnp.logical_and(slots >= first_slot[:, None], slots < length[:, None])
    logits = jnp.where(valid[..., None], logits.astype(jnp.float32), -jnp.inf)
    p_stop = jax.nn.sigmoid(stop_logit.astype(jnp.float32))
    if temperature == 0.0:
      stop_now = p_stop > stop_threshold
    else:
      stop_now = jax.random.uniform(r_stop, p_stop.shape) < p_stop
    full = length >= size
    stopped = jnp.logical_or(stopped, jnp.logical_and(stop_now, ~full))
    active = ~jnp.logical_or(stopped, full)
    pick = sample_logits(logits.reshape(batch, size * vocab), r_pick, temperature=temperature)
    grown = insert_token(tokens, pick // vocab, pick % vocab)
    tokens = jnp.where(active[:, None], grown, tokens)
    return tokens, length + active, stopped, rng

  init = (tokens, length, jnp.zeros((batch,), bool), rng)
  tokens, length, stopped, _ = jax.lax.fori_loop(0, max_insertions, step, init)
  return tokens, length, stopped
