"""Feeding a model its own tokens during training: mixing schedules and token-mixing ops
(scheduled sampling, Bengio et al. 2015; batch-scheduled sampling and reference-answer-based
correction, Cen et al. 2025). Written once; tokenlab.methods.self_generated_tokens uses them.

Conventions: `inputs` (batch, length) are the teacher-forced input tokens of a next-token
batch (inputs[t] = token t, targets[t] = token t + 1); a `region` (batch, length) bool marks
the input positions that may be replaced (e.g. the answer tokens, never the prompt).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenlab.nn.generate import sample_logits

SCHEDULES = ("constant", "linear", "sigmoid")


def mixing_probability(progress: jax.Array, max_prob: float, schedule: str = "linear",
                       sharpness: float = 10.0) -> jax.Array:
  """The probability of feeding a model token at training progress in [0, 1].

  constant: max_prob throughout. linear: rises from 0 to max_prob. sigmoid: the
  inverse-sigmoid decay of teacher forcing of Bengio et al. (flat start, steep middle),
  rescaled to be 0 at progress 0 and max_prob at 1; `sharpness` sets its steepness.
  """
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  if schedule == "constant":
    return jnp.float32(max_prob) + 0.0 * p
  if schedule == "linear":
    return max_prob * p
  if schedule == "sigmoid":
    s = lambda x: jax.nn.sigmoid(sharpness * (x - 0.5))
    return max_prob * (s(p) - s(0.0)) / (s(1.0) - s(0.0))
  raise ValueError(f"unknown schedule '{schedule}'; use one of {SCHEDULES}")


def answer_region(loss_mask: jax.Array) -> jax.Array:
  """(batch, length) bool: the input positions holding a token that is also a target
  (inputs[t] = targets[t - 1] with loss_mask[t - 1] on), i.e. the tokens the model itself
  produces at inference; the prompt's tokens are never in it."""
  mask = loss_mask > 0
  return jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask[:, :-1]], 1)


def first_region_index(region: jax.Array) -> jax.Array:
  """(batch,) the first position of each row's region (its prompt length); the length when
  the row has none."""
  length = region.shape[1]
  idx = jnp.where(region, jnp.arange(length)[None], length)
  return jnp.min(idx, axis=1)


def predicted_inputs(logits: jax.Array, inputs: jax.Array, rng: jax.Array, *,
                     temperature: float = 1.0) -> jax.Array:
  """The model's own token for every input position, from one teacher-forced pass.

  logits (batch, length, vocab) of that pass; returns (batch, length) tokens whose entry t
  is sampled from logits[t - 1] (the model's prediction of input t given the ground truth
  before it); entry 0 (nothing predicts it) is inputs[:, 0]. temperature 0 = argmax.
  """
  b, n, v = logits.shape
  flat = sample_logits(logits[:, :-1].reshape(b * (n - 1), v), rng, temperature=temperature)
  pred = flat.reshape(b, n - 1).astype(inputs.dtype)
  return jnp.concatenate([inputs[:, :1], pred], 1)


def mix_tokens(inputs: jax.Array, replacements: jax.Array, region: jax.Array,
               prob: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Replaces each token of `region` by its replacement with probability `prob`.

  inputs, replacements (batch, length) int; region (batch, length) bool; prob a scalar (or
  broadcastable to (batch, length)). Returns (mixed inputs, replaced mask). prob 0 returns
  `inputs` unchanged (no position is drawn), which makes the method teacher forcing exactly.
  """
  draw = jax.random.uniform(rng, inputs.shape) < prob
  replaced = jnp.logical_and(region, draw)
  return jnp.where(replaced, replacements, inputs), replaced


def own_prefix_mask(region: jax.Array, use_row: jax.Array, rng: jax.Array) -> jax.Array:
  """(batch, length) bool: for each row with use_row, the first k positions of its region,
  k uniform in 1..(region size); nothing for the other rows.

  A prefix (not scattered positions) because a free-running generation is only the model's
  own after its first own token: later tokens condition on the earlier own ones.
  """
  size = jnp.sum(region, axis=1)
  k = jnp.floor(jax.random.uniform(rng, size.shape) * size).astype(jnp.int32) + 1
  rank = jnp.cumsum(region, axis=1)              # 1-based position within the region
  return region & (rank <= k[:, None]) & use_row[:, None]
