"""Pieces of language models over multi-codebook codec tokens (RVQ audio codecs), written once.

A codec frame is K codes, one per RVQ level: codes (B, T, K). Speech LMs differ in how they
lay those K streams out for a transformer:

* `delay_pattern` / `undo_delay_pattern`: MusicGen / VALL-E's flat layout. Level k is shifted
  right by k steps, so at step s the model predicts level 0 of frame s, level 1 of frame
  s - 1, ..., all K levels in one step with K heads, and level k of a frame is predicted
  after levels < k of the same frame have been seen. T frames take T + K - 1 steps.
* `CodebookSumEmbedding`: one vector per frame, the sum of the K levels' embeddings (the frame
  embedding of FireRedTTS-2's dual transformer and of the delay-pattern model's input).

Shapes: codes (B, T, K) int; `pad_id` fills the positions the shift leaves empty (use an id
outside every codebook, e.g. max(codebook_sizes), and give the embeddings one extra row).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def delay_pattern(codes: jax.Array, pad_id: int) -> jax.Array:
  """codes (B, T, K) -> delayed (B, T + K - 1, K): delayed[:, s, k] = codes[:, s - k, k]
  where 0 <= s - k < T, else pad_id."""
  b, t, k = codes.shape
  steps = jnp.arange(t + k - 1)[:, None] - jnp.arange(k)[None, :]        # (S, K): frame s - k
  valid = (steps >= 0) & (steps < t)
  gathered = jnp.take_along_axis(
      codes, jnp.broadcast_to(jnp.clip(steps, 0, t - 1)[None], (b, t + k - 1, k)), axis=1)
  return jnp.where(valid[None], gathered, jnp.asarray(pad_id, codes.dtype))


def delay_valid(num_frames: int, num_levels: int) -> jax.Array:
  """bool (T + K - 1, K): True where `delay_pattern` holds a real code (not padding)."""
  steps = jnp.arange(num_frames + num_levels - 1)[:, None] - jnp.arange(num_levels)[None, :]
  return (steps >= 0) & (steps < num_frames)


def undo_delay_pattern(delayed: jax.Array) -> jax.Array:
  """delayed (B, T + K - 1, K) -> codes (B, T, K): codes[:, t, k] = delayed[:, t + k, k]."""
  b, s, k = delayed.shape
  t = s - k + 1
  if t < 1:
    raise ValueError(f"a delayed sequence of {s} steps with {k} levels holds no frame "
                     f"(it needs at least {k} steps)")
  rows = jnp.arange(t)[:, None] + jnp.arange(k)[None, :]                 # (T, K): step t + k
  return jnp.take_along_axis(delayed, jnp.broadcast_to(rows[None], (b, t, k)), axis=1)


class CodebookSumEmbedding(nn.Module):
  """codes (..., K) int -> (..., d_model): the sum over levels of each level's embedding.

  `codebook_sizes` (K,) entries per level; each table has `extra_ids` more rows (pad, BOS,
  mask ids placed at codebook_size, codebook_size + 1, ...)."""
  codebook_sizes: Sequence[int]
  d_model: int
  extra_ids: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    if codes.shape[-1] != len(self.codebook_sizes):
      raise ValueError(f"codes have {codes.shape[-1]} levels on their last axis; the "
                       f"embedding has {len(self.codebook_sizes)} ({tuple(self.codebook_sizes)})")
    out = 0.0
    for k, size in enumerate(self.codebook_sizes):
      table = nn.Embed(size + self.extra_ids, self.d_model, dtype=self.dtype,
                       embedding_init=nn.initializers.normal(self.d_model ** -0.5),
                       name=f"level_{k}")
      out = out + table(codes[..., k])
    return out
