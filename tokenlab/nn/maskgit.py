"""MaskGIT iterative decoding (Chang et al. 2022, arXiv 2202.04200), written once.

A grid of N tokens starts fully masked. Each of T steps: the bidirectional model predicts
every position; a token is sampled at each masked position; its confidence is the log
probability of the sampled token plus Gumbel noise whose scale anneals linearly to zero
(`choice_temperature * (1 - (t + 1) / T)`, so early steps explore and the last commit
greedily); then the positions still to be masked after step t (the mask schedule) are the
least confident of the freshly sampled ones and go back to the mask token. Tokens decided at
an earlier step are never re-masked.

Schedule: after step t (of T) floor(n * gamma((t + 1) / T)) of a row's n initially masked
tokens stay masked, with gamma(r) = cos(pi r / 2) (the paper's cosine) or 1 - r (linear),
lowered where needed so that every step reveals at least one token while any is left; the
last step reveals the rest (`masked_schedule`, `unmask_counts`).

Classifier-free guidance (ECHOPulse, MUSE): the model runs on [conditional; null] rows as
one batch (see `tokenlab.nn.generate.guided_logits`).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.corruption import random_subset
from tokenlab.nn.generate import guided_logits, sample_logits

SCHEDULES = ("cosine", "linear")


def mask_ratio(r: float, schedule: str = "cosine") -> float:
  """gamma(r): the fraction of tokens still masked at progress r in [0, 1] (1 -> 0)."""
  if schedule == "cosine":
    return math.cos(0.5 * math.pi * r)
  if schedule == "linear":
    return 1.0 - r
  raise ValueError(f"mask schedule '{schedule}' unknown; use one of {SCHEDULES}")


def masked_schedule(num_steps: int, num_masked: jax.Array,
                    schedule: str = "cosine") -> jax.Array:
  """(num_steps, *num_masked.shape) int32: tokens still masked after each step, for rows
  that start with `num_masked` masked tokens. floor(n * gamma((t + 1) / T)), lowered where
  needed so that every step reveals at least one token while any is masked; 0 after the
  last step."""
  # numpy for concrete counts (planning, tests: no per-op dispatch), jnp under tracing.
  xp = jnp if isinstance(num_masked, jax.Array) else np
  num_masked = xp.asarray(num_masked, xp.int32)
  prev, out = num_masked, []
  for t in range(num_steps):
    # float32 in both paths, so planned and traced schedules agree at exact boundaries.
    ratio = np.float32(mask_ratio((t + 1) / num_steps, schedule))
    target = xp.floor(num_masked.astype(xp.float32) * ratio).astype(xp.int32)
    # cos(pi/2) rounds to a tiny negative: clip at 0; the last step reveals everything.
    prev = xp.clip(xp.minimum(target, prev - 1), 0, None)
    out.append(prev if t < num_steps - 1 else xp.zeros_like(prev))
  return xp.stack(out)


def unmask_counts(num_tokens: int, num_steps: int, schedule: str = "cosine") -> np.ndarray:
  """(num_steps,) int: tokens revealed at each step from a fully masked grid; sums to
  num_tokens (numpy, for planning and tests)."""
  after = np.asarray(masked_schedule(num_steps, num_tokens, schedule))
  return -np.diff(np.concatenate([[num_tokens], after]))


def maskgit_decode(logits_fn: Callable[[jax.Array], jax.Array], batch_shape: tuple[int, int],
                   num_steps: int, *, mask_id: int, rng: jax.Array,
                   tokens: jax.Array | None = None, schedule: str = "cosine",
                   temperature: float = 1.0, top_k: int = 0, choice_temperature: float = 4.5,
                   cfg_scale: float | jax.Array | None = None,
                   return_history: bool = False):
  """Fills a masked token grid in `num_steps` parallel steps.

  Args:
    logits_fn: tokens (rows, N) -> logits (rows, N, vocab), bidirectional. With `cfg_scale`
      it is called on 2B rows, the batch twice, and must return [conditional; null] logits
      (e.g. it closes over labels concatenated with null labels).
    batch_shape: (B, N) of the grid (N = H * W tokens in raster order).
    num_steps: T decoding steps.
    mask_id: the mask token (never sampled when it is inside the vocabulary).
    tokens: optional (B, N) start with some positions known (inpainting, editing): only the
      `mask_id` positions are decoded, on each row's own schedule. Default: all masked.
    temperature, top_k: sampling of each position's token (`sample_logits`; 0 = argmax).
    choice_temperature: the scale of the Gumbel noise on confidences at step 0 (annealed
      linearly to 0); 0 = always re-mask the least confident.
    cfg_scale: None, or classifier-free guidance null + s (cond - null).
    return_history: also return the mask after each step.
  Returns:
    (B, N) int32 tokens with no mask left; with return_history also (T, B, N) bool, True
    where a position is still masked after that step.
  """
  batch, length = batch_shape
  if tokens is None:
    tokens = jnp.full((batch, length), mask_id, jnp.int32)
  tokens = jnp.asarray(tokens, jnp.int32)
  plan = masked_schedule(num_steps, jnp.sum(tokens == mask_id, axis=-1), schedule)  # (T, B)

  def step(carry, xs):
    tokens, rng = carry
    t, keep_masked = xs
    rng, r_sample, r_gumbel = jax.random.split(rng, 3)
    masked = tokens == mask_id
    if cfg_scale is None:
      logits = logits_fn(tokens).astype(jnp.float32)
    else:
      logits = guided_logits(logits_fn(jnp.concatenate([tokens, tokens], 0)), cfg_scale)
    if mask_id < logits.shape[-1]:
      logits = logits.at[..., mask_id].set(-jnp.inf)
    vocab = logits.shape[-1]
    sampled = sample_logits(logits.reshape(batch * length, vocab), r_sample,
                            temperature=temperature, top_k=top_k).reshape(batch, length)
    logp = jax.nn.log_softmax(logits, axis=-1)
    conf = jnp.take_along_axis(logp, sampled[..., None], axis=-1)[..., 0]
    anneal = choice_temperature * (1.0 - (t + 1) / num_steps)
    conf = conf + anneal * jax.random.gumbel(r_gumbel, conf.shape)
    # Decided tokens are never re-masked: +inf ranks them last.
    conf = jnp.where(masked, conf, jnp.inf)
    rank = jnp.argsort(jnp.argsort(conf, axis=-1), axis=-1)  # 0 = least confident
    remask = rank < keep_masked[:, None]
    tokens = jnp.where(masked, sampled.astype(jnp.int32), tokens)
    tokens = jnp.where(remask, mask_id, tokens)
    return (tokens, rng), remask

  (tokens, _), history = jax.lax.scan(step, (tokens, rng), (jnp.arange(num_steps), plan))
  return (tokens, history) if return_history else tokens


def training_mask(rng: jax.Array, batch: int, num_tokens: int,
                  schedule: str = "cosine") -> jax.Array:
  """MaskGIT training masks (B, N) bool, True = masked: per row r ~ U(0, 1), then
  ceil(N * gamma(r)) positions (at least 1) chosen uniformly at random, gamma the decoding
  schedule (`mask_ratio`), so training sees the mask ratios decoding visits."""
  r_ratio, r_pos = jax.random.split(rng)
  u = jax.random.uniform(r_ratio, (batch,))
  if schedule == "cosine":
    gamma = jnp.cos(0.5 * jnp.pi * u)
  else:
    mask_ratio(0.0, schedule)   # ValueError for an unknown schedule
    gamma = 1.0 - u
  count = jnp.clip(jnp.ceil(num_tokens * gamma), 1, num_tokens).astype(jnp.int32)
  return random_subset(r_pos, jnp.ones((batch, num_tokens), bool), count)


def ordered_decode(logits_fn: Callable[[jax.Array], jax.Array], batch_shape: tuple[int, int],
                   *, mask_id: int, rng: jax.Array, tokens_per_step: int = 1,
                   order: jax.Array | np.ndarray | None = None, temperature: float = 1.0,
                   top_k: int = 0, cfg_scale: float | jax.Array | None = None) -> jax.Array:
  """Fills a fully masked grid in a fixed order, `tokens_per_step` positions per network call:
  the token-by-token (autoregressive-order) decoding of a masked model, MaskGIT's baseline.

  Step s runs the model on the grid so far and samples positions order[s k : (s + 1) k]
  from their predictions (the rest stay masked), so the grid is done in N / k network
  evaluations (k = tokens_per_step; MaskGIT needs its T steps). `order` (N,) is a
  permutation of positions (default: raster order 0..N-1); `logits_fn`, `cfg_scale`,
  `temperature` and `top_k` as in `maskgit_decode`.

  Returns (B, N) int32 tokens with no mask left.
  """
  batch, length = batch_shape
  k = tokens_per_step
  if k < 1 or length % k:
    raise ValueError(f"tokens_per_step={k} must divide the {length} grid positions")
  order = np.arange(length) if order is None else np.asarray(order)
  if sorted(order.tolist()) != list(range(length)):
    raise ValueError(f"order must be a permutation of 0..{length - 1}")
  slots = jnp.asarray(order.reshape(length // k, k), jnp.int32)        # (steps, k)
  tokens = jnp.full((batch, length), mask_id, jnp.int32)

  def step(carry, positions):
    tokens, rng = carry
    rng, r_sample = jax.random.split(rng)
    if cfg_scale is None:
      logits = logits_fn(tokens).astype(jnp.float32)
    else:
      logits = guided_logits(logits_fn(jnp.concatenate([tokens, tokens], 0)), cfg_scale)
    logits = jnp.take(logits, positions, axis=1)                         # (B, k, vocab)
    if mask_id < logits.shape[-1]:
      logits = logits.at[..., mask_id].set(-jnp.inf)
    sampled = sample_logits(logits.reshape(batch * k, -1), r_sample, temperature=temperature,
                            top_k=top_k).reshape(batch, k)
    return (tokens.at[:, positions].set(sampled.astype(jnp.int32)), rng), None

  (tokens, _), _ = jax.lax.scan(step, (tokens, rng), slots)
  return tokens
