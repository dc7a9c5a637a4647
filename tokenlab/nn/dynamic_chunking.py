"""Dynamic chunking (H-Net; Hwang, Wang & Gu 2025, arXiv 2507.07955): routing, chunk, dechunk.

Pure functions over (batch, length, dim) arrays, used by `tokenlab.methods.hnet` at every
stage of the hierarchy:

- `boundary_probs(q, k, doc_start)`: p_t = clip((1 - cos(q_{t-1}, k_t)) / 2, 0, 1), p = 1 where
  a document starts (the paper's p_0 = 1, applied at every packed document start).
- `boundaries(p, valid)`: b_t = p_t > 1/2 (the reference's argmax over (1 - p, p)), always at
  t = 0, never on invalid (padding) positions.
- `ratio_loss(b, p, target, valid)`: the paper's auxiliary loss; 1 at F = G = 1/N, its
  minimum along F = G.
- `chunk(x, b, p, positions, segment_ids, max_chunks)`: the paper's ChunkLayer keeps the
  vector at each boundary position (a stable compaction). Here that is
  `tokenlab.kernels.merge_by_boundaries` with weights = b: a group's weighted mean is then
  exactly its first (boundary) vector, the group ids are the paper's `cumsum(b) - 1`, and the
  kernel's counts give the chunk sizes. Keeping the *first* vector, not the group mean, is
  what makes the model causal: the chunk starting at byte t is built from bytes <= t only,
  so it can feed predictions at t and later (a mean over bytes t..t+k would leak k future
  bytes into position t after dechunking).
- `ema(z, p)`: the dechunk smoothing zbar_j = p_j z_j + (1 - p_j) zbar_{j-1}, as an
  associative scan (the reference reuses a Mamba-2 scan kernel for it).
- `dechunk(z, p_chunks, group_ids, smoothing)`: EMA (optional) then `unmerge` (the paper's
  gather with cumsum(b) - 1).
- `ste_ones(c)`: forward 1, backward identity (straight-through estimator).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tokenlab.kernels import merge_by_boundaries, unmerge

P_MIN = 1e-4  # the reference clamps p to [1e-4, 1 - 1e-4] in the dechunk EMA


def boundary_probs(q: jax.Array, k: jax.Array, doc_start: jax.Array) -> jax.Array:
  """(B, L, D), (B, L, D), (B, L) bool -> p (B, L) float32 in [0, 1]; p = 1 at doc starts."""
  q = q.astype(jnp.float32)
  k = k.astype(jnp.float32)
  qn = q * jax.lax.rsqrt(jnp.sum(q * q, -1, keepdims=True) + 1e-12)
  kn = k * jax.lax.rsqrt(jnp.sum(k * k, -1, keepdims=True) + 1e-12)
  cos = jnp.sum(qn[:, :-1] * kn[:, 1:], -1)
  p = jnp.clip((1.0 - cos) / 2.0, 0.0, 1.0)
  p = jnp.concatenate([jnp.ones_like(p[:, :1]), p], axis=1)
  return jnp.where(doc_start, 1.0, p)


def boundaries(p: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """p (B, L) -> b (B, L) bool: p > 1/2, forced at t = 0, off where not valid."""
  b = p > 0.5
  if valid is not None:
    b = b & valid
  return b.at[:, 0].set(True)


def ratio_loss(b: jax.Array, p: jax.Array, target: float,
               valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The paper's ratio loss N/(N-1) ((N-1) F G + (1-F)(1-G)) with F = mean(b), G = mean(p).

  F carries no gradient (b is discrete); G does. Returns (loss, F, G).
  """
  n = float(target)
  if n <= 1.0:
    raise ValueError(f"target compression ratio must be > 1, got {target}")
  w = jnp.ones(p.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  f = jnp.sum(b.astype(jnp.float32) * w) / denom
  g = jnp.sum(p.astype(jnp.float32) * w) / denom
  loss = n / (n - 1.0) * ((n - 1.0) * f * g + (1.0 - f) * (1.0 - g))
  return loss, f, g


class Chunks(NamedTuple):
  x: jax.Array           # (B, M, D) the vector at each chunk's boundary position
  p: jax.Array           # (B, M) boundary probability of each chunk's first byte
  group_ids: jax.Array   # (B, L) chunk index of every position (cumsum(b) - 1)
  counts: jax.Array      # (B, M) positions per chunk (0 = padding chunk)
  valid: jax.Array       # (B, M) bool, a real chunk (not padding, not past max_chunks)
  positions: jax.Array   # (B, M) chunk index within its document (for RoPE)
  segment_ids: jax.Array  # (B, M) document id of the chunk (0 = padding)
  starts: jax.Array      # (B, M) position of each chunk's first byte (L for padding)


def chunk(x: jax.Array, b: jax.Array, p: jax.Array, positions: jax.Array,
          segment_ids: jax.Array, max_chunks: int) -> Chunks:
  """Keeps the boundary positions of x, compacted to (B, max_chunks, D); see module doc.

  More than `max_chunks` chunks is allowed (positions of the extra chunks get group ids >=
  max_chunks and `unmerge` gives them zeros): the body always runs under jit, where
  `merge_by_boundaries` does not refuse it as it does for concrete boundaries.
  """
  return _chunk(x, b, p, positions, segment_ids, int(max_chunks))


@functools.partial(jax.jit, static_argnums=(5,))
def _chunk(x, b, p, positions, segment_ids, max_chunks):
  bsz, length, _ = x.shape
  merged, gid, counts = merge_by_boundaries(x, b, weights=b.astype(jnp.float32),
                                            max_groups=max_chunks)
  t = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
  rows = jnp.arange(bsz, dtype=jnp.int32)[:, None]
  starts = jnp.full((bsz, max_chunks), length, jnp.int32).at[rows, gid].min(t, mode="drop")
  valid = starts < length
  safe = jnp.minimum(starts, length - 1)
  p_c = jnp.take_along_axis(p, safe, axis=1)
  seg_c = jnp.where(valid, jnp.take_along_axis(segment_ids, safe, axis=1), 0)
  # Chunk index within the document: gid minus the gid of the document's first position.
  doc_first = jnp.clip(t - positions, 0, length - 1)
  local = gid - jnp.take_along_axis(gid, doc_first, axis=1)
  pos_c = jnp.where(valid, jnp.take_along_axis(local, safe, axis=1), 0)
  return Chunks(merged, p_c, gid, counts, valid, pos_c, seg_c, starts)


def ema(z: jax.Array, p: jax.Array) -> jax.Array:
  """zbar_j = p_j z_j + (1 - p_j) zbar_{j-1} along axis 1 (zbar_{-1} = 0); in float32."""
  a = (1.0 - p).astype(jnp.float32)[..., None]
  u = p.astype(jnp.float32)[..., None] * z.astype(jnp.float32)

  def combine(left, right):
    a_l, u_l = left
    a_r, u_r = right
    return a_l * a_r, a_r * u_l + u_r

  _, out = jax.lax.associative_scan(combine, (jnp.broadcast_to(a, u.shape), u), axis=1)
  return out.astype(z.dtype)


def dechunk(z: jax.Array, p_chunks: jax.Array, group_ids: jax.Array, *, smoothing: bool = True,
            reset: jax.Array | None = None) -> jax.Array:
  """Chunk outputs (B, M, D) -> per-position (B, L, D): EMA over chunks, then `unmerge`.

  p is clamped to [1e-4, 1 - 1e-4] as in the reference; `reset` (B, M) bool sets p = 1
  (chunks that start a document: no state leaks across packed documents).
  """
  if smoothing:
    pc = jnp.clip(p_chunks.astype(jnp.float32), P_MIN, 1.0 - P_MIN)
    if reset is not None:
      pc = jnp.where(reset, 1.0, pc)
    z = ema(z, pc)
  return unmerge(z, group_ids)


def ste_ones(c: jax.Array) -> jax.Array:
  """1 in the forward pass, gradient of c in the backward pass."""
  return c + jax.lax.stop_gradient(1.0 - c)
