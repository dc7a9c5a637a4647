"""Sequence corruptions that generative denoisers learn to undo, written once.

* dropping (insertion models): delete a random subset of tokens and close the gaps; the
  model learns which token goes into which gap (`drop_tokens`, `insertion_targets`);
* masking (masked diffusion models): replace a random subset by a mask id (`mask_tokens`).

Slots: in a sequence of n tokens, slot s (0 <= s < n) is the gap right after token s, so
inserting token v at slot s puts v at index s + 1 (`insert_token`). There is no slot before
token 0: sequences that can grow at the front start with a fixed token (e.g. a CLS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_subset(rng: jax.Array, eligible: jax.Array, count: jax.Array) -> jax.Array:
  """A uniformly random subset of `count` eligible positions per row.

  eligible (batch, length) bool; count (batch,) int (clipped to the eligible number)
  -> (batch, length) bool.
  """
  scores = jnp.where(eligible, jax.random.uniform(rng, eligible.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)   # 0 = lowest score
  return jnp.logical_and(eligible, rank < count[:, None])


def drop_tokens(tokens: jax.Array, drop: jax.Array, pad_id: int = 0
                ) -> tuple[jax.Array, jax.Array]:
  """Deletes the `drop` positions and moves the kept tokens left (order kept), pads after.

  tokens (batch, length) int; drop (batch, length) bool
  -> (kept (batch, length) int, slot (batch, length) int): slot[b, j] is the slot of the
  kept sequence that original token j goes back into (the gap after the kept token just
  left of it); -1 where no kept token is left of j.
  """
  keep = jnp.logical_not(drop)
  order = jnp.argsort(drop, axis=-1, stable=True)     # kept first, each group in order
  kept = jnp.take_along_axis(tokens, order, axis=-1)
  num_kept = jnp.sum(keep, axis=-1, keepdims=True)
  kept = jnp.where(jnp.arange(tokens.shape[1]) < num_kept, kept, pad_id)
  kept_before = jnp.cumsum(keep, axis=-1) - keep       # kept tokens strictly left of j
  return kept, (kept_before - 1).astype(jnp.int32)


def insertion_targets(tokens: jax.Array, drop: jax.Array, slot: jax.Array, vocab_size: int
                      ) -> jax.Array:
  """Counts of dropped tokens per (slot, token): (batch, length, vocab) float32.

  Normalised by the number dropped this is the insertion model's target distribution over
  the joint (slot, token) choice; all zeros when nothing was dropped (then the target is
  "stop"). Dropped tokens with slot -1 are not counted (see `drop_tokens`).
  """
  length = tokens.shape[1]
  where = jax.nn.one_hot(slot, length, dtype=jnp.float32) * drop[..., None]   # (b, j, s)
  what = jax.nn.one_hot(tokens, vocab_size, dtype=jnp.float32)                # (b, j, v)
  return jnp.einsum("bjs,bjv->bsv", where, what)


def insert_token(tokens: jax.Array, slot: jax.Array, token: jax.Array) -> jax.Array:
  """Inserts token[b] right after position slot[b]; the last position falls off the end.

  tokens (batch, length); slot, token (batch,) int -> (batch, length).
  """
  j = jnp.arange(tokens.shape[1])[None]
  shifted = jnp.roll(tokens, 1, axis=1)                 # shifted[:, j] = tokens[:, j - 1]
  slot = slot[:, None]
  out = jnp.where(j <= slot, tokens, shifted)
  return jnp.where(j == slot + 1, token[:, None].astype(tokens.dtype), out)


def mask_tokens(rng: jax.Array, tokens: jax.Array, eligible: jax.Array, mask_id: int
                ) -> tuple[jax.Array, jax.Array]:
  """Masked-diffusion corruption: a rate t ~ U(0, 1) per row, each eligible token masked
  with probability t, and at least one per row that has any (so every row has a loss).

  tokens, eligible (batch, length) -> (corrupted tokens, masked (batch, length) bool).
  """
  r_rate, r_tok, r_one = jax.random.split(rng, 3)
  rate = jax.random.uniform(r_rate, (tokens.shape[0], 1))
  masked = jnp.logical_and(eligible, jax.random.uniform(r_tok, tokens.shape) < rate)
  one = random_subset(r_one, eligible, jnp.ones(tokens.shape[:1], jnp.int32))
  masked = jnp.logical_or(masked, jnp.logical_and(one, ~jnp.any(masked, -1, keepdims=True)))
  return jnp.where(masked, mask_id, tokens), masked
