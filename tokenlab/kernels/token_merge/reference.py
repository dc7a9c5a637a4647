"""Pure jax.numpy token merging: the source of truth and the CPU path.

Every merge in this package is a *weighted segment mean*: token t of row b belongs to group
`group_ids[b, t]` and a group's vector is the weighted mean of its tokens. What differs between
the operations is how the groups are decided:

- `merge_by_boundaries`: contiguous groups that start where `boundaries` is True (H-Net's
  chunking, MergeDNA's chunks).
- ToMe's bipartite soft matching (Bolya et al., 2023, `facebookresearch/ToMe:tome/merge.py`):
  tokens alternate between sets A (even positions) and B (odd positions); each A token finds
  its most cosine-similar B token; the r A tokens with the highest best-similarity merge into
  their match.
- Local-window merging (MergeDNA, arXiv 2511.14806, as in the unofficial reproduction
  `PLBFischer/MergeDNA:model/token_merge.py`): inside each window, adjacent pairs ranked by
  cosine similarity are taken greedily when both tokens are still free.

Merged tokens are always laid out in the original order of their first (surviving) token, so
protected tokens stay in front and positions stay monotone. (ToMe concatenates [unmerged A, B];
the merge *decisions* here are identical to ToMe's, only the output order differs.)

The code is written for the CPU: the A x B score matrix is computed in row chunks whose
max/argmax are taken while the chunk is still in cache, selection uses `top_k` instead of a full
argsort, and the mean is one scatter-add of pre-scaled rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# Rows of A scored per step of the chunked best-match search. 128 rows x 2048 B tokens of f32
# is 1 MiB per batch row: small enough to stay in cache for the max/argmax that follow.
_MATCH_CHUNK = 128
# A guard for zero metric vectors (ToMe divides by the norm and yields NaN there; we yield a
# similarity of 0 instead). It does not change any decision for nonzero vectors.
_TINY = 1e-30


class MergePlan(NamedTuple):
  """What ToMe's bipartite soft matching decided (a pytree: it passes through jit).

  Attributes:
    src_idx: (B, r) int32, original positions of the A tokens that merge, in ToMe's order
      (highest best-similarity first).
    dst_idx: (B, r) int32, original position of the B token each of them merges into.
    group_ids: (B, N) int32, the merged slot in [0, N - r) of every input token; `unmerge`
      takes it directly.
  """
  src_idx: jax.Array
  dst_idx: jax.Array
  group_ids: jax.Array

  @property
  def num_out(self) -> int:
    """Number of tokens after merging, N - r (static)."""
    return self.group_ids.shape[1] - self.src_idx.shape[1]


def group_ids_from_boundaries(boundaries: jax.Array) -> jax.Array:
  """(B, N) bool -> (B, N) int32 group index; position 0 always starts group 0."""
  starts = boundaries.astype(jnp.int32).at[:, 0].set(1)
  return jnp.cumsum(starts, axis=1, dtype=jnp.int32) - 1


def segment_weighted_mean(x: jax.Array, weights: jax.Array | None, group_ids: jax.Array,
                          num_groups: int, *, sorted_ids: bool = False
                          ) -> tuple[jax.Array, jax.Array]:
  """Weighted mean of the tokens of each group.

  Args:
    x: (B, N, D) tokens.
    weights: (B, N) nonnegative weights, or None for 1.
    group_ids: (B, N) int32 group of each token; ids outside [0, num_groups) are dropped.
    num_groups: M, the number of output rows.
    sorted_ids: the ids are nondecreasing along N (lets XLA pick a faster scatter).
  Returns:
    merged (B, M, D) in x's dtype (zero for empty groups or groups of zero weight) and the
    summed weights (B, M) float32.
  """
  b, n, _ = x.shape
  w = jnp.ones((b, n), jnp.float32) if weights is None else weights.astype(jnp.float32)
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]
  wsum = jnp.zeros((b, num_groups), jnp.float32).at[rows, group_ids].add(w, mode="drop")
  # Pre-scale every token by w / W(group) so the scatter-add directly produces the mean: one
  # pass over x instead of a sum pass plus a division pass over the output.
  denom = jnp.take_along_axis(wsum, jnp.clip(group_ids, 0, num_groups - 1), axis=1)
  scale = jnp.where(denom > 0, w / jnp.where(denom > 0, denom, 1.0), 0.0)
  upd = x.astype(jnp.float32) * scale[..., None]
  merged = jnp.zeros((b, num_groups, x.shape[2]), jnp.float32).at[rows, group_ids].add(
      upd, mode="drop", indices_are_sorted=sorted_ids)
  return merged.astype(x.dtype), wsum


def gather_groups(merged: jax.Array, group_ids: jax.Array) -> jax.Array:
  """(B, M, D), (B, N) -> (B, N, D): each token gets its group's row (0 if out of range)."""
  m = merged.shape[1]
  valid = (group_ids >= 0) & (group_ids < m)
  out = jnp.take_along_axis(merged, jnp.clip(group_ids, 0, m - 1)[..., None], axis=1)
  return jnp.where(valid[..., None], out, jnp.zeros((), merged.dtype))


def normalize(metric: jax.Array) -> jax.Array:
  """Rows scaled to unit L2 norm, in float32 (zero rows stay zero)."""
  m = metric.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(m * m, axis=-1, keepdims=True))
  return m / jnp.maximum(norm, _TINY)


def best_match(a: jax.Array, b: jax.Array, protected_a: int, protected_b: int,
               chunk: int = _MATCH_CHUNK) -> tuple[jax.Array, jax.Array]:
  """Each A row's most similar B row, never writing the full A x B score matrix at once.

  Args:
    a: (B, NA, D) unit rows; b: (B, NB, D) unit rows.
    protected_a: the first `protected_a` A rows may not merge (their best score is -inf).
    protected_b: the first `protected_b` B rows may not receive a merge.
    chunk: A rows scored per step.
  Returns:
    node_max (B, NA) float32 and node_idx (B, NA) int32; ties go to the lowest B index.
  """
  bsz, na, d = a.shape
  nb = b.shape[1]
  chunk = max(1, min(chunk, na))
  nchunks = -(-na // chunk)
  a = jnp.pad(a, ((0, 0), (0, nchunks * chunk - na), (0, 0)))
  a_chunks = jnp.moveaxis(a.reshape(bsz, nchunks, chunk, d), 1, 0)
  col = lax.broadcasted_iota(jnp.int32, (1, 1, nb), 2)

  def one_chunk(args):
    i, ac = args
    s = jnp.einsum("bcd,bnd->bcn", ac, b, precision=lax.Precision.HIGHEST)
    row = i * chunk + lax.broadcasted_iota(jnp.int32, (1, chunk, 1), 1)
    s = jnp.where((col < protected_b) | (row < protected_a), -jnp.inf, s)
    mx = jnp.max(s, axis=-1)
    # argmax as "smallest index attaining the max": two plain reductions vectorise on CPU,
    # XLA's variadic argmax reduction does not (it was half the peer's time).
    idx = jnp.min(jnp.where(s == mx[..., None], col, nb), axis=-1)
    return mx, jnp.minimum(idx, nb - 1)

  mx, idx = lax.map(one_chunk, (jnp.arange(nchunks, dtype=jnp.int32), a_chunks))
  mx = jnp.moveaxis(mx, 0, 1).reshape(bsz, -1)[:, :na]
  idx = jnp.moveaxis(idx, 0, 1).reshape(bsz, -1)[:, :na]
  return mx, idx.astype(jnp.int32)


def effective_r(n: int, r: int, protected: int) -> int:
  """ToMe's clamp: at most half of the unprotected tokens can go."""
  return max(0, min(int(r), (n - int(protected)) // 2))


def interleave(a: jax.Array, b: jax.Array) -> jax.Array:
  """(B, ceil(N/2), ...), (B, floor(N/2), ...) -> (B, N, ...) with a at even positions."""
  na, nb = a.shape[1], b.shape[1]
  both = jnp.stack([a[:, :nb], b], axis=2).reshape(a.shape[0], 2 * nb, *a.shape[2:])
  return jnp.concatenate([both, a[:, nb:]], axis=1) if na > nb else both


def plan_from_matches(node_max: jax.Array, node_idx: jax.Array, n: int, r: int) -> MergePlan:
  """Top-r selection and group ids from each A token's best match (r already clamped)."""
  bsz, na = node_max.shape
  nb = n // 2
  rows = jnp.arange(bsz, dtype=jnp.int32)[:, None]
  if r == 0:
    empty = jnp.zeros((bsz, 0), jnp.int32)
    return MergePlan(empty, empty, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (bsz, n)))
  # lax.top_k breaks ties toward the lower index: the same order as a stable descending sort,
  # which is the deterministic version of ToMe's argsort.
  _, src_a = lax.top_k(node_max, r)
  src_a = src_a.astype(jnp.int32)
  dst_b = jnp.take_along_axis(node_idx, src_a, axis=1)
  is_src = jnp.zeros((bsz, na), bool).at[rows, src_a].set(True)
  keep = interleave(~is_src, jnp.ones((bsz, nb), bool))
  slot = jnp.cumsum(keep, axis=1, dtype=jnp.int32) - 1
  slot_a, slot_b = slot[:, ::2], slot[:, 1::2]
  target = jnp.take_along_axis(slot_b, jnp.minimum(node_idx, nb - 1), axis=1)
  gid = interleave(jnp.where(is_src, target, slot_a), slot_b)
  return MergePlan(2 * src_a, 2 * dst_b + 1, gid)


def bipartite_soft_matching(metric: jax.Array, r: int, protected: int = 0) -> MergePlan:
  """ToMe's bipartite soft matching; see the module docstring. metric: (B, N, C)."""
  n = metric.shape[1]
  r = effective_r(n, r, protected)
  if r == 0:
    return plan_from_matches(jnp.zeros((metric.shape[0], (n + 1) // 2)),
                             jnp.zeros((metric.shape[0], (n + 1) // 2), jnp.int32), n, 0)
  m = normalize(metric)
  node_max, node_idx = best_match(m[:, ::2], m[:, 1::2], (protected + 1) // 2, protected // 2)
  return plan_from_matches(node_max, node_idx, n, r)


def window_r(n: int, window: int, r: int) -> list[int]:
  """Pairs merged in each window: min(r, window length // 2); the last window may be short."""
  nw = -(-n // window)
  lengths = [min(window, n - i * window) for i in range(nw)]
  return [min(int(r), length // 2) for length in lengths]


def adjacent_similarity(metric: jax.Array) -> jax.Array:
  """(B, N, C) -> (B, N - 1) cosine similarity of tokens t and t + 1."""
  m = normalize(metric)
  return jnp.sum(m[:, :-1] * m[:, 1:], axis=-1)


def greedy_window_pairs(sim: jax.Array, valid: jax.Array, r_w: jax.Array) -> jax.Array:
  """Greedy disjoint adjacent pairs inside windows.

  Args:
    sim: (..., P) similarity of pair p = (p, p + 1) within a window (P = window - 1).
    valid: (..., P) bool, pair p exists (both tokens inside the sequence).
    r_w: (...) int32 pairs to take in each window.
  Returns:
    (..., P) bool, True for the chosen pairs. Pairs are visited by decreasing similarity (ties:
    lower p first) and taken when both tokens are free, until r_w are taken; if that greedy
    matching gets stuck below r_w, the window takes pairs (0,1), (2,3), ... instead, as the
    MergeDNA reproduction does.
  """
  p = sim.shape[-1]
  key = jnp.where(valid, sim, -jnp.inf)
  order = jnp.argsort(-key, axis=-1, stable=True).astype(jnp.int32)
  tok = lax.broadcasted_iota(jnp.int32, sim.shape[:-1] + (p + 1,), sim.ndim - 1)
  pair = lax.broadcasted_iota(jnp.int32, sim.shape, sim.ndim - 1)
  # A loop of window - 1 steps, vectorised over all windows; one-hot masks instead of
  # scatters keep each step to plain elementwise ops.
  def step(k, carry):
    used, chosen, count = carry
    q = lax.dynamic_index_in_dim(order, k, axis=order.ndim - 1, keepdims=False)
    q_valid = jnp.take_along_axis(valid, q[..., None], axis=-1)[..., 0]
    pair_tokens = (tok == q[..., None]) | (tok == q[..., None] + 1)
    free = ~jnp.any(used & pair_tokens, axis=-1)
    take = free & q_valid & (count < r_w)
    used = used | (pair_tokens & take[..., None])
    chosen = chosen | ((pair == q[..., None]) & take[..., None])
    return used, chosen, count + take.astype(jnp.int32)

  init = (jnp.zeros(sim.shape[:-1] + (p + 1,), bool), jnp.zeros(sim.shape, bool),
          jnp.zeros(sim.shape[:-1], jnp.int32))
  _, chosen, count = lax.fori_loop(0, p, step, init)
  fallback = (pair % 2 == 0) & (pair < 2 * r_w[..., None])
  return jnp.where((count < r_w)[..., None], fallback, chosen)


def local_window_plan(metric: jax.Array, window: int, r: int) -> tuple[jax.Array, int]:
  """Group ids (B, N) and the merged length M of MergeDNA-style local-window merging."""
  bsz, n, _ = metric.shape
  rs = window_r(n, window, r)
  nw = len(rs)
  m_out = n - sum(rs)
  if sum(rs) == 0:
    return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (bsz, n)), m_out
  sim = adjacent_similarity(metric)
  sim = jnp.pad(sim, ((0, 0), (0, nw * window - (n - 1))))
  sim_w = sim.reshape(bsz, nw, window)[..., :window - 1]
  pos = jnp.arange(nw * window, dtype=jnp.int32).reshape(nw, window)[:, :window - 1]
  valid = jnp.broadcast_to(pos + 1 < n, sim_w.shape)
  r_w = jnp.broadcast_to(jnp.asarray(rs, jnp.int32), (bsz, nw))
  chosen = greedy_window_pairs(sim_w, valid, r_w)
  return group_ids_from_pairs(chosen, n), m_out


def group_ids_from_pairs(chosen: jax.Array, n: int) -> jax.Array:
  """(B, nw, window - 1) chosen pairs -> (B, N) group ids (the right token joins the left)."""
  bsz, nw, p = chosen.shape
  absorbed = jnp.pad(chosen, ((0, 0), (0, 0), (1, 0)))  # token t absorbed if pair t-1 chosen
  absorbed = absorbed.reshape(bsz, nw * (p + 1))[:, :n]
  return jnp.cumsum(~absorbed, axis=1, dtype=jnp.int32) - 1

