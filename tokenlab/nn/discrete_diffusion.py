"""Discrete diffusion over tokens (vector-quantized diffusion), written once.

VQ-Diffusion (Gu et al., CVPR 2022, arXiv 2111.14822) and D3PM (Austin et al. 2021) diffuse a
sequence of codebook indices x0 by a Markov chain on the vocabulary and train a network to
predict x0 from the corrupted x_t; MotionAura (arXiv 2410.07659) applies it to the tokens of a
3-D video tokenizer. Two forward processes q(x_t | x0), t in [0, 1], each token of the
`eligible` positions corrupted independently:

* "absorb": the token becomes the mask id with probability t (absorbing state; MaskGIT and
  masked diffusion are this process);
* "uniform": the token is replaced by a code drawn uniformly from the K codes with
  probability t (VQ-Diffusion's "replace" part; it may redraw itself).

So t = 0 is the identity and t = 1 is all masked (absorb) or pure uniform noise (uniform);
positions that are not eligible (context tokens) never change.

The denoiser predicts x0 (x0-parameterisation): `x0_cross_entropy` is the cross-entropy of
the true tokens at the positions that carry a loss (the masked ones for "absorb", every
eligible one for "uniform", where the network cannot tell which were replaced). This is the
auxiliary x0 loss of VQ-Diffusion used alone, without the variational bound's 1/t weights
(the common simplification of masked-diffusion training, as in MaskGIT).

Sampling (`sample`), given context tokens that never change:
* absorb: start with every unknown position masked; each of T steps predicts x0 everywhere,
  samples it, and reveals a uniformly random subset of the still-masked positions, with the
  numbers still masked after each step taken from `tokenlab.nn.maskgit.masked_schedule` (the
  reverse of the absorbing process: which masked token is revealed is independent of its
  value; MaskGIT instead reveals the most confident ones);
* uniform: start from uniform noise; each step samples x0_hat from the network and re-noises
  it to the next, lower level t' (x_t' ~ q(x_t' | x0_hat)), t' = gamma((k + 1) / T) with
  MaskGIT's schedule gamma, ending at t' = 0.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.corruption import random_subset
from tokenlab.nn.generate import sample_logits
from tokenlab.nn.maskgit import mask_ratio, masked_schedule

PROCESSES = ("absorb", "uniform")

# logits_fn(tokens (B, N) int32, t (B,) float32) -> logits (B, N, V)
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_process(process: str) -> None:
  if process not in PROCESSES:
    raise ValueError(f"discrete diffusion process '{process}' unknown; use one of "
                     f"{', '.join(PROCESSES)}")


def input_vocab_size(process: str, vocab_size: int) -> int:
  """Entries the denoiser's embedding needs: the K codes, plus the mask id K for 'absorb'."""
  check_process(process)
  return vocab_size + 1 if process == "absorb" else vocab_size


def corrupt(rng: jax.Array, tokens: jax.Array, t: jax.Array, eligible: jax.Array, *,
            process: str, vocab_size: int, mask_id: int) -> tuple[jax.Array, jax.Array]:
  """Draws x_t ~ q(x_t | x0 = tokens).

  tokens (B, N) int; t (B,) float in [0, 1]; eligible (B, N) bool.
  -> (x_t (B, N) int32, hit (B, N) bool: the positions the process touched (masked, or
  redrawn; a redraw may give back the same code)).
  """
  check_process(process)
  r_hit, r_code = jax.random.split(rng)
  tokens = tokens.astype(jnp.int32)
  hit = eligible & (jax.random.uniform(r_hit, tokens.shape) < t[:, None])
  if process == "absorb":
    new = jnp.full_like(tokens, mask_id)
  else:
    new = jax.random.randint(r_code, tokens.shape, 0, vocab_size, jnp.int32)
  return jnp.where(hit, new, tokens), hit


def loss_weights(x_t: jax.Array, eligible: jax.Array, *, process: str, mask_id: int
                 ) -> jax.Array:
  """(B, N) float32: 1 where the x0 prediction is scored (see the module docstring)."""
  check_process(process)
  scored = (x_t == mask_id) & eligible if process == "absorb" else eligible
  return scored.astype(jnp.float32)


def x0_cross_entropy(logits: jax.Array, tokens: jax.Array, weights: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cross-entropy of the true tokens under the x0 prediction.

  logits (B, N, V), tokens (B, N), weights (B, N) -> (summed nll, summed weight, summed
  weighted correct argmax): divide by the weight for the mean (kept as sums so padded rows
  and micro-batches average exactly).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct * weights)


def sample(logits_fn: LogitsFn, tokens: jax.Array, known: jax.Array, num_steps: int,
           rng: jax.Array, *, process: str, vocab_size: int, mask_id: int,
           schedule: str = "cosine", temperature: float = 1.0, top_k: int = 0) -> jax.Array:
  """Generates the unknown positions of `tokens` by the reverse process in `num_steps` steps.

  tokens (B, N) int (values at unknown positions are ignored); known (B, N) bool: the
  context, returned unchanged. `logits_fn(x_t, t)` predicts x0 logits over >= vocab_size
  entries (entries from vocab_size on, e.g. the mask id, are never sampled).
  -> (B, N) int32 with every position a code in [0, vocab_size).
  """
  check_process(process)
  tokens = jnp.asarray(tokens, jnp.int32)
  batch, length = tokens.shape
  unknown = jnp.logical_not(known)
  num_unknown = jnp.sum(unknown, axis=-1)

  def draw(x, t, r):
    logits = logits_fn(x, t).astype(jnp.float32)[..., :vocab_size]
    flat = sample_logits(logits.reshape(batch * length, vocab_size), r,
                         temperature=temperature, top_k=top_k)
    return flat.reshape(batch, length).astype(jnp.int32)

  if process == "absorb":
    plan = masked_schedule(num_steps, num_unknown, schedule)          # (T, B) still masked
    x = jnp.where(known, tokens, mask_id)

    def step(carry, keep_masked):
      x, rng = carry
      rng, r_draw, r_pick = jax.random.split(rng, 3)
      masked = x == mask_id
      count = jnp.sum(masked, axis=-1)
      t = count / jnp.maximum(num_unknown, 1)
      x0 = draw(x, t.astype(jnp.float32), r_draw)
      reveal = random_subset(r_pick, masked, count - keep_masked)
      return (jnp.where(reveal, x0, x), rng), None

    (x, _), _ = jax.lax.scan(step, (x, rng), plan)
    return x

  # uniform: levels t_k = gamma(k / T), k = 0..T (1 at the start, 0 at the end).
  levels = np.array([mask_ratio(k / num_steps, schedule) for k in range(num_steps + 1)],
                    np.float32)
  levels[-1] = 0.0
  rng, r_init = jax.random.split(rng)
  x = jnp.where(known, tokens, jax.random.randint(r_init, tokens.shape, 0, vocab_size,
                                                  jnp.int32))

  def step(carry, level):
    x, rng = carry
    rng, r_draw, r_noise = jax.random.split(rng, 3)
    now, nxt = level
    x0 = draw(x, jnp.full((batch,), now), r_draw)
    x, _ = corrupt(r_noise, x0, jnp.full((batch,), nxt), unknown, process=process,
                   vocab_size=vocab_size, mask_id=mask_id)
    return (jnp.where(known, tokens, x), rng), None

  (x, _), _ = jax.lax.scan(step, (x, rng), (jnp.asarray(levels[:-1]), jnp.asarray(levels[1:])))
  return x
