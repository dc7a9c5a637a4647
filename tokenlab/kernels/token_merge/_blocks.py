"""Block-level math shared by the GPU and TPU Pallas kernels.

These functions work on arrays already loaded from refs (one block), use only elementwise ops,
reductions and 2-D dots (what both Triton and Mosaic lower), and never sort or scatter.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST
# Index used for "no such column" in argmin-style reductions.
BIG = 2**30


def match_block(a: jnp.ndarray, b: jnp.ndarray, col0, nb: int, protected_b: int):
  """Best B column of every A row within one B block.

  a: (ba, D) unit rows; b: (bb, D) unit rows whose first column index is `col0`.
  Returns (ba,) block max and (ba,) lowest column attaining it (global index).
  """
  s = lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=HIGHEST,
                      preferred_element_type=jnp.float32)
  col = col0 + lax.broadcasted_iota(jnp.int32, s.shape, 1)
  s = jnp.where((col >= nb) | (col < protected_b), -jnp.inf, s)
  mx = jnp.max(s, axis=1)
  idx = jnp.min(jnp.where(s == mx[:, None], col, BIG), axis=1)
  return mx, idx


def merge_running(run_max, run_idx, mx, idx):
  """Streaming max/argmax update; strict > keeps the earlier (lower-index) block on ties."""
  better = mx > run_max
  return jnp.where(better, mx, run_max), jnp.where(better, idx, run_idx)


def segment_block(x, w, gid, g0, bm: int):
  """Weighted sums of one token block into the output groups [g0, g0 + bm).

  x: (bn, D); w: (bn,); gid: (bn,) int32. Returns (bm, D) sums and (bm, 1) weight sums.
  The scatter is a one-hot matmul: deterministic, no atomics, runs on the MXU/tensor cores.
  """
  rows = g0 + lax.broadcasted_iota(jnp.int32, (bm, gid.shape[0]), 0)
  onehot_w = jnp.where(rows == gid[None, :], w[None, :], 0.0).astype(jnp.float32)
  acc = jnp.dot(onehot_w, x.astype(jnp.float32), precision=HIGHEST,
                preferred_element_type=jnp.float32)
  return acc, jnp.sum(onehot_w, axis=1, keepdims=True)


def window_block(x, metric, w, r_w: int):
  """MergeDNA local merging of a block of full windows, all inside registers/VMEM.

  x: (nw, W, D); metric: (nw, W, C); w: (nw, W) weights; r_w: pairs per window (<= W // 2).
  Returns merged (nw, W - r_w, D), group ids within the window (nw, W) int32 and merged
  weights (nw, W - r_w).

  Selection: r_w rounds of "take the most similar pair whose two tokens are both free
  (ties: leftmost)". That is the same matching as visiting pairs in stable descending order
  and skipping blocked ones (a blocked pair stays blocked), without a sort. If a round finds
  no free pair the greedy matching is stuck and the window falls back to (0,1), (2,3), ...
  """
  nw, win, _ = x.shape
  m = metric.astype(jnp.float32)
  m = m / jnp.maximum(jnp.sqrt(jnp.sum(m * m, axis=-1, keepdims=True)), 1e-30)
  sim = jnp.sum(m[:, :-1] * m[:, 1:], axis=-1)  # (nw, W - 1)
  pair = lax.broadcasted_iota(jnp.int32, sim.shape, 1)

  # The selection state is int32 0/1, not bool: Mosaic does not lay out boolean vectors that
  # are carried through a loop, concatenated or reshaped (i1 -> i8 relayouts fail to compile).
  def round_(_, carry):
    free, chosen, stuck = carry
    is_free = free > 0
    key = jnp.where(is_free, sim, -jnp.inf)
    mx = jnp.max(key, axis=1, keepdims=True)
    q = jnp.min(jnp.where(is_free & (key == mx), pair, BIG), axis=1, keepdims=True)
    ok = q < BIG  # (nw, 1)
    chosen = jnp.where((pair == q) & ok, 1, chosen)
    # A chosen pair blocks itself and both neighbours.
    free = jnp.where((pair >= q - 1) & (pair <= q + 1) & ok, 0, free)
    return free, chosen, jnp.where(ok, stuck, 1)

  init = (jnp.ones(sim.shape, jnp.int32), jnp.zeros(sim.shape, jnp.int32),
          jnp.zeros((nw, 1), jnp.int32))
  _, chosen, stuck = lax.fori_loop(0, r_w, round_, init)
  fallback = (pair % 2 == 0) & (pair < 2 * r_w)
  chosen = jnp.where(stuck > 0, fallback.astype(jnp.int32), chosen)
  zero_col = jnp.zeros((nw, 1), jnp.int32)
  absorbed = jnp.concatenate([zero_col, chosen], axis=1)  # token t joins t - 1
  lead = jnp.concatenate([chosen, zero_col], axis=1) > 0  # token t takes t + 1
  keep_i = 1 - absorbed
  keep = keep_i > 0
  # Inclusive prefix count of kept tokens by a small triangular matmul (no cumsum in kernels).
  tri = (lax.broadcasted_iota(jnp.int32, (win, win), 0)
         <= lax.broadcasted_iota(jnp.int32, (win, win), 1)).astype(jnp.float32)
  slot = jnp.dot(keep_i.astype(jnp.float32), tri, precision=HIGHEST).astype(jnp.int32) - 1
  wf = w.astype(jnp.float32)
  xf = x.astype(jnp.float32)
  w_next = jnp.concatenate([wf[:, 1:], jnp.zeros((nw, 1), jnp.float32)], axis=1)
  x_next = jnp.concatenate([xf[:, 1:], jnp.zeros_like(xf[:, :1])], axis=1)
  w_next = jnp.where(lead, w_next, 0.0)
  den = wf + w_next
  num = wf[..., None] * xf + w_next[..., None] * x_next
  # Masks that broadcast over D are float32 multipliers, never bool: Mosaic cannot reshape a
  # boolean vector (nw, W) -> (nw, W, 1) (`infer-vector-layout: unsupported shape cast`).
  # Multiplying a finite value by 1.0 or 0.0 is exact, so the result is unchanged.
  has_den = den > 0
  y = (num / jnp.where(has_den, den, 1.0)[..., None]) * has_den.astype(jnp.float32)[..., None]
  # Compaction: output slot o holds the kept token at position o + k for some k in [0, r_w].
  n_out = win - r_w
  o = lax.broadcasted_iota(jnp.int32, (nw, n_out), 1)
  out = jnp.zeros((nw, n_out, x.shape[2]), jnp.float32)
  size = jnp.zeros((nw, n_out), jnp.float32)
  for k in range(r_w + 1):
    sel = keep[:, k:k + n_out] & (slot[:, k:k + n_out] == o)
    out = out + y[:, k:k + n_out] * sel.astype(jnp.float32)[..., None]
    size = size + jnp.where(sel, den[:, k:k + n_out], 0.0)
  return out.astype(x.dtype), slot, size
