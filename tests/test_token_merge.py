"""Token merging kernels: decisions against direct numpy transcriptions of the published
algorithms, invariants (sizes, unmerge), gradients against finite differences, and the Pallas
kernels (interpret mode on CPU) against the reference."""

import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tokenlab.errors import TokenlabError
from tokenlab.kernels import (bipartite_soft_matching, local_window_merge, merge_by_boundaries,
                              merge_tokens, unmerge)

IMPLS = ["reference", "pallas_gpu", "pallas_tpu"]


# ---------------------------------------------------------------------------------------------
# Direct numpy transcriptions of the published algorithms (the oracles).


def tome_numpy(metric, x, r, protected, size=None):
  """facebookresearch/ToMe tome/merge.py: bipartite_soft_matching + merge_wavg, one batch row
  at a time, in float64. Protected tokens generalise ToMe's class token (A row 0 gets -inf)
  and distillation token (B column 0 gets -inf). Ties: first index for max, stable sort.

  Returns (pairs, merged, sizes) with merged/sizes put back in original token order, and pairs
  the set of (src position, dst position)."""
  bsz, t, _ = metric.shape
  r = min(r, (t - protected) // 2)
  out_pairs, out_x, out_s = [], [], []
  for bi in range(bsz):
    m = metric[bi].astype(np.float64)
    m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    a, b = m[::2], m[1::2]
    scores = a @ b.T
    scores[:(protected + 1) // 2, :] = -np.inf
    scores[:, :protected // 2] = -np.inf
    node_max = scores.max(axis=-1)
    node_idx = scores.argmax(axis=-1)
    edge_idx = np.argsort(-node_max, kind="stable")
    unm_idx, src_idx = edge_idx[r:], edge_idx[:r]
    dst_idx = node_idx[src_idx]
    s = np.ones(t) if size is None else size[bi].astype(np.float64)
    xs = x[bi].astype(np.float64) * s[:, None]
    # merge(x * size, "sum") and merge(size, "sum"), then divide: ToMe's merge_wavg.
    src_x, dst_x = xs[::2].copy(), xs[1::2].copy()
    src_s, dst_s = s[::2].copy(), s[1::2].copy()
    for si, di in zip(src_idx, dst_idx):
      dst_x[di] += src_x[si]
      dst_s[di] += src_s[si]
    unm_x, unm_s = src_x[unm_idx], src_s[unm_idx]
    merged = np.concatenate([unm_x, dst_x]) / np.concatenate([unm_s, dst_s])[:, None]
    sizes = np.concatenate([unm_s, dst_s])
    positions = np.concatenate([2 * unm_idx, 2 * np.arange(len(dst_x)) + 1])
    order = np.argsort(positions)
    out_pairs.append({(2 * int(si), 2 * int(di) + 1) for si, di in zip(src_idx, dst_idx)})
    out_x.append(merged[order])
    out_s.append(sizes[order])
  return out_pairs, np.stack(out_x), np.stack(out_s)


def window_merge_numpy(metric, x, window, r, size=None):
  """MergeDNA local merging as in PLBFischer/MergeDNA model/token_merge.py (greedy disjoint
  adjacent pairs by descending similarity, stable; left-to-right fallback), applied inside each
  window; size-weighted means. Returns (group_ids, merged, sizes) in original order."""
  bsz, n, _ = metric.shape
  gids, outs, sizes = [], [], []
  for bi in range(bsz):
    m = metric[bi].astype(np.float64)
    m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    sim = np.sum(m[:-1] * m[1:], axis=-1)
    absorbed = np.zeros(n, bool)
    for start in range(0, n, window):
      length = min(window, n - start)
      rw = min(r, length // 2)
      if rw == 0:
        continue
      local = sim[start:start + length - 1]
      used, sel = set(), []
      for p in np.argsort(-local, kind="stable"):
        if p not in used and p + 1 not in used:
          sel.append(p)
          used.update((p, p + 1))
          if len(sel) == rw:
            break
      if len(sel) < rw:
        sel = list(range(0, 2 * rw, 2))
      for p in sel:
        absorbed[start + p + 1] = True
    gid = np.cumsum(~absorbed) - 1
    s = np.ones(n) if size is None else size[bi].astype(np.float64)
    mcount = gid[-1] + 1
    num = np.zeros((mcount, x.shape[-1]))
    den = np.zeros(mcount)
    np.add.at(num, gid, x[bi].astype(np.float64) * s[:, None])
    np.add.at(den, gid, s)
    gids.append(gid)
    outs.append(num / den[:, None])
    sizes.append(den)
  return np.stack(gids), np.stack(outs), np.stack(sizes)


def boundaries_numpy(x, boundaries, weights, m):
  bsz, n, d = x.shape
  out = np.zeros((bsz, m, d))
  counts = np.zeros((bsz, m), int)
  for bi in range(bsz):
    starts = [0] + [t for t in range(1, n) if boundaries[bi, t]]
    ends = starts[1:] + [n]
    for g, (s, e) in enumerate(zip(starts, ends)):
      w = np.ones(e - s) if weights is None else weights[bi, s:e].astype(np.float64)
      out[bi, g] = (w[:, None] * x[bi, s:e]).sum(0) / w.sum()
      counts[bi, g] = e - s
  return out, counts


def _rng(seed):
  # TOKENLAB_TEST_SEED=k reruns every case on fresh random inputs.
  return np.random.default_rng(seed + 7919 * int(os.environ.get("TOKENLAB_TEST_SEED", "0")))


# ---------------------------------------------------------------------------------------------
# ToMe bipartite soft matching.


@pytest.mark.parametrize("n,r,protected", [(17, 5, 0), (16, 8, 0), (23, 11, 1), (24, 4, 2),
                                           (9, 0, 0), (13, 100, 3), (7, 3, 1), (5, 2, 0)])
def test_tome_decisions_and_merge_match_transcription(n, r, protected):
  rng = _rng(1000 + 31 * n + r + protected)
  metric = rng.normal(size=(3, n, 6)).astype(np.float32)
  x = rng.normal(size=(3, n, 5)).astype(np.float32)
  size = rng.integers(1, 4, size=(3, n)).astype(np.float32)
  pairs, want_x, want_s = tome_numpy(metric, x, r, protected, size)
  plan = bipartite_soft_matching(jnp.asarray(metric), r, protected=protected,
                                 implementation="reference")
  r_eff = min(r, (n - protected) // 2)
  assert plan.src_idx.shape == (3, r_eff) and plan.num_out == n - r_eff
  for bi in range(3):
    got = {(int(s), int(d)) for s, d in zip(plan.src_idx[bi], plan.dst_idx[bi])}
    assert got == pairs[bi]
  merged, sizes = merge_tokens(jnp.asarray(x), plan, jnp.asarray(size), implementation="reference")
  np.testing.assert_allclose(np.asarray(merged), want_x, rtol=1e-5, atol=1e-5)
  # Exact: sizes are sums of small integers in float32, exact in any summation order.
  np.testing.assert_allclose(np.asarray(sizes), want_s, rtol=0, atol=0)
  np.testing.assert_allclose(np.asarray(sizes).sum(1), size.sum(1))
  # Protected tokens keep their slot and value.
  np.testing.assert_allclose(np.asarray(merged)[:, :protected], x[:, :protected], rtol=1e-6)


def test_tome_ties_break_to_lowest_index():
  # One-hot metrics make exact ties everywhere (cosine similarities are exactly 0 or 1).
  rng = _rng(7)
  n = 21
  for r in (4, 10):
    metric = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=(4, n))]
    x = rng.normal(size=(4, n, 4)).astype(np.float32)
    pairs, want_x, _ = tome_numpy(metric, x, r, 1)
    plan = bipartite_soft_matching(jnp.asarray(metric), r, protected=1,
                                   implementation="reference")
    for bi in range(4):
      assert {(int(s), int(d)) for s, d in zip(plan.src_idx[bi], plan.dst_idx[bi])} == pairs[bi]
    merged, _ = merge_tokens(jnp.asarray(x), plan, implementation="reference")
    np.testing.assert_allclose(np.asarray(merged), want_x, rtol=1e-5, atol=1e-6)


def test_tome_r_zero_is_identity_and_r_max_halves():
  rng = _rng(3)
  x = jnp.asarray(rng.normal(size=(2, 15, 4)).astype(np.float32))
  plan = bipartite_soft_matching(x, 0)
  merged, sizes = merge_tokens(x, plan)
  # Exact: with no merge every group is one token of weight 1 (x * 1 / 1 + 0), and an
  # identity that changes no bit is the property under test.
  np.testing.assert_array_equal(np.asarray(merged), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(sizes), np.ones((2, 15)))
  plan = bipartite_soft_matching(x, 10_000, protected=1)
  assert plan.num_out == 15 - 7
  merged, sizes = merge_tokens(x, plan)
  assert merged.shape == (2, 8, 4)
  np.testing.assert_array_equal(np.asarray(sizes).sum(1), [15, 15])


def test_tome_unmerge_restores_group_constant_tokens():
  rng = _rng(11)
  metric = jnp.asarray(rng.normal(size=(2, 31, 8)).astype(np.float32))
  plan = bipartite_soft_matching(metric, 12, protected=1)
  vals = rng.normal(size=(2, plan.num_out, 6)).astype(np.float32)
  x = unmerge(jnp.asarray(vals), plan.group_ids)  # constant on every group
  merged, sizes = merge_tokens(x, plan)
  np.testing.assert_allclose(np.asarray(merged), vals, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(unmerge(merged, plan.group_ids)), np.asarray(x),
                             rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Merge by boundaries.


@pytest.mark.parametrize("n,p,weighted,max_groups", [(1, 0.5, False, None), (13, 0.3, True, None),
                                                     (40, 0.1, False, 12), (33, 0.9, True, 40)])
def test_merge_by_boundaries_matches_numpy(n, p, weighted, max_groups):
  rng = _rng(100 + n)
  x = rng.normal(size=(3, n, 7)).astype(np.float32)
  bnd = rng.random((3, n)) < p
  bnd[:, 0] = rng.random(3) < 0.5  # position 0 starts a group whatever it says
  if max_groups is not None:
    bnd[:, :] = bnd & (np.cumsum(bnd, 1) < max_groups - 1)
  w = rng.uniform(0.1, 2.0, size=(3, n)).astype(np.float32) if weighted else None
  m = max_groups or n
  merged, gid, counts = merge_by_boundaries(jnp.asarray(x), jnp.asarray(bnd),
                                            weights=None if w is None else jnp.asarray(w),
                                            max_groups=max_groups, implementation="reference")
  want, want_counts = boundaries_numpy(x, bnd, w, m)
  assert merged.shape == (3, m, 7) and gid.dtype == jnp.int32
  np.testing.assert_allclose(np.asarray(merged), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(counts), want_counts)
  np.testing.assert_array_equal(np.asarray(counts).sum(1), [n] * 3)


def test_merge_by_boundaries_too_many_groups_is_an_error():
  x = jnp.ones((1, 6, 2))
  bnd = jnp.asarray([[True, True, False, True, True, False]])
  with pytest.raises(TokenlabError, match="max_groups>=4"):
    merge_by_boundaries(x, bnd, max_groups=3)
  # Under jit the overflow is visible in group_ids instead.
  f = jax.jit(lambda x, b: merge_by_boundaries(x, b, max_groups=3, implementation="reference"))
  _, gid, counts = f(x, bnd)
  assert int(gid.max()) == 3 and int(counts.sum()) == 4  # 2 tokens of group 3 are out


def test_unmerge_of_merge_by_boundaries_restores_group_constant_x():
  rng = _rng(5)
  bnd = rng.random((2, 50)) < 0.3
  gid = np.cumsum(np.concatenate([np.ones((2, 1), bool), bnd[:, 1:]], 1), 1) - 1
  vals = rng.normal(size=(2, 50, 3)).astype(np.float32)
  x = np.take_along_axis(vals, gid[..., None], 1)
  merged, g, _ = merge_by_boundaries(jnp.asarray(x), jnp.asarray(bnd), implementation="reference")
  np.testing.assert_array_equal(np.asarray(g), gid)
  np.testing.assert_allclose(np.asarray(unmerge(merged, g)), x, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Local-window merging.


@pytest.mark.parametrize("n,window,r", [(32, 8, 2), (37, 8, 3), (19, 5, 2), (10, 4, 2), (9, 16, 4),
                                        (12, 6, 0), (21, 7, 3)])
def test_local_window_merge_matches_transcription(n, window, r):
  rng = _rng(200 + n * window + r)
  metric = rng.normal(size=(2, n, 5)).astype(np.float32)
  x = rng.normal(size=(2, n, 3)).astype(np.float32)
  size = rng.integers(1, 5, size=(2, n)).astype(np.float32)
  want_gid, want_x, want_s = window_merge_numpy(metric, x, window, r, size)
  merged, gid, sizes = local_window_merge(jnp.asarray(x), jnp.asarray(metric), window=window,
                                          r=r, sizes=jnp.asarray(size),
                                          implementation="reference")
  np.testing.assert_array_equal(np.asarray(gid), want_gid)
  np.testing.assert_allclose(np.asarray(merged), want_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(sizes), want_s)
  # No merge crosses a window; each group is at most a pair.
  g = np.asarray(gid)
  same = g[:, 1:] == g[:, :-1]
  crosses = (np.arange(1, n) % window) == 0
  assert not np.any(same & crosses[None])
  assert np.bincount(g[0]).max() <= 2


def test_local_window_fallback_when_greedy_gets_stuck():
  # Window of 4 where the middle pair is by far the most similar: greedy takes (1,2) and is
  # stuck at one pair; r = 2 forces the (0,1), (2,3) fallback.
  metric = np.array([[[1, 0], [0, 1], [0, 1], [1, 0]]], np.float32)
  x = np.arange(8, dtype=np.float32).reshape(1, 4, 2)
  _, gid, _ = local_window_merge(jnp.asarray(x), jnp.asarray(metric), window=4, r=2,
                                 implementation="reference")
  np.testing.assert_array_equal(np.asarray(gid), [[0, 0, 1, 1]])
  _, gid, _ = local_window_merge(jnp.asarray(x), jnp.asarray(metric), window=4, r=1,
                                 implementation="reference")
  np.testing.assert_array_equal(np.asarray(gid), [[0, 1, 1, 2]])


# ---------------------------------------------------------------------------------------------
# Gradients against finite differences.


def _check_grads_fd(f, args, rng, eps=1e-2):
  """Directional central differences vs jax.grad for every argument (one grad compile)."""
  grads = jax.grad(f, argnums=tuple(range(len(args))))(*args)
  for i, g in enumerate(grads):
    v = rng.normal(size=args[i].shape).astype(np.float32)
    plus, minus = list(args), list(args)
    plus[i] = args[i] + eps * v
    minus[i] = args[i] - eps * v
    fd = (float(f(*plus)) - float(f(*minus))) / (2 * eps)
    an = float(np.sum(np.asarray(g) * v))
    assert abs(fd - an) <= 2e-3 * max(1.0, abs(an)), (f, i, fd, an)


@pytest.mark.parametrize("impl,fns", [("reference", ("bnd", "tome", "win")),
                                      # The Pallas paths share the segment-mean backward; the
                                      # fused window kernel has its own custom_vjp wrapper.
                                      ("pallas_gpu", ("win",))])
def test_gradients_match_finite_differences(impl, fns):
  rng = _rng(77)
  n, d = 14, 3
  x = jnp.asarray(rng.normal(size=(2, n, d)).astype(np.float32))
  w = jnp.asarray(rng.uniform(0.5, 2.0, size=(2, n)).astype(np.float32))
  bnd = jnp.asarray(rng.random((2, n)) < 0.4)
  proj = jnp.asarray(rng.normal(size=(2, n, d)).astype(np.float32))
  proj_s = jnp.asarray(rng.normal(size=(2, n)).astype(np.float32))
  plan = bipartite_soft_matching(x, 5, protected=1, implementation="reference")
  metric = jnp.asarray(rng.normal(size=(2, n, 4)).astype(np.float32))

  def f_bnd(x, w):
    merged, gid, _ = merge_by_boundaries(x, bnd, weights=w, implementation=impl)
    return jnp.sum(jnp.sin(unmerge(merged, gid)) * proj)

  def f_tome(x, w):
    merged, sizes = merge_tokens(x, plan, w, implementation=impl)
    return jnp.sum(jnp.sin(merged) * proj[:, :merged.shape[1]]) + jnp.sum(
        jnp.log(sizes) * proj_s[:, :sizes.shape[1]])

  def f_win(x, w):
    merged, _, sizes = local_window_merge(x, metric, window=5, r=2, sizes=w, implementation=impl)
    return jnp.sum(jnp.sin(merged) * proj[:, :merged.shape[1]]) + jnp.sum(
        jnp.sqrt(sizes) * proj_s[:, :sizes.shape[1]])

  table = {"bnd": f_bnd, "tome": f_tome, "win": f_win}
  for name in fns:
    _check_grads_fd(jax.jit(table[name]), (x, w), rng)


# ---------------------------------------------------------------------------------------------
# Pallas kernels (interpret mode on CPU) against the reference.


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_pallas_matches_reference(impl):
  rng = _rng(2024)
  # Odd sizes that are not multiples of any block size; r at its maximum; protected tokens.
  n, r, protected = 61, 100, 2
  metric = jnp.asarray(rng.normal(size=(2, n, 8)).astype(np.float32))
  x = jnp.asarray(rng.normal(size=(2, n, 5)).astype(np.float32))
  want = bipartite_soft_matching(metric, r, protected=protected, implementation="reference")
  got = bipartite_soft_matching(metric, r, protected=protected, implementation=impl)
  assert want.num_out == n - (n - protected) // 2
  for a, b in zip(got, want):  # int32 indices: exact
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  s = jnp.asarray(rng.integers(1, 3, size=(2, n)).astype(np.float32))
  mw, sw = merge_tokens(x, want, s, implementation="reference")
  mg, sg = merge_tokens(x, want, s, implementation=impl)
  np.testing.assert_allclose(np.asarray(mg), np.asarray(mw), rtol=1e-5, atol=1e-5)
  # Sizes of integer weights sum exactly in float32 whatever the kernel's order: exact.
  np.testing.assert_array_equal(np.asarray(sg), np.asarray(sw))
  # Boundaries, weighted, padded to max_groups.
  n = 300
  x = jnp.asarray(rng.normal(size=(2, n, 7)).astype(np.float32))
  bnd = jnp.asarray((rng.random((2, n)) < 0.2) & (np.arange(n) < 250))
  w = jnp.asarray(rng.uniform(0.1, 1.0, size=(2, n)).astype(np.float32))
  want = merge_by_boundaries(x, bnd, weights=w, max_groups=90, implementation="reference")
  got = merge_by_boundaries(x, bnd, weights=w, max_groups=90, implementation=impl)
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-5, atol=1e-5)
  for a, b in zip(got[1:], want[1:]):  # group ids and counts, int32: exact
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Windows: 4 full windows at r = window // 2 and a short tail window (37 = 4 * 8 + 5).
  n, window, r = 37, 8, 4
  x = jnp.asarray(rng.normal(size=(2, n, 6)).astype(np.float32))
  metric = jnp.asarray(rng.normal(size=(2, n, 4)).astype(np.float32))
  s = jnp.asarray(rng.integers(1, 3, size=(2, n)).astype(np.float32))
  want = local_window_merge(x, metric, window=window, r=r, sizes=s, implementation="reference")
  got = local_window_merge(x, metric, window=window, r=r, sizes=s, implementation=impl)
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-5, atol=1e-5)
  # Group ids (int32) and sizes (sums of integer sizes, exact in float32): exact.
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(want[2]))


# ---------------------------------------------------------------------------------------------
# Errors speak to the user.


def test_bad_arguments_raise_tokenlab_error():
  x = jnp.ones((1, 8, 4))
  with pytest.raises(TokenlabError, match="batch"):
    merge_by_boundaries(jnp.ones((8, 4)), jnp.ones((8,), bool))
  with pytest.raises(TokenlabError, match="Python int"):
    bipartite_soft_matching(x, 2.5)
  with pytest.raises(TokenlabError, match="implementation"):
    bipartite_soft_matching(x, 2, implementation="cuda")
  with pytest.raises(TokenlabError, match="window"):
    local_window_merge(x, x, window=1, r=1)
  plan = bipartite_soft_matching(x, 2)
  with pytest.raises(TokenlabError, match="rerun bipartite_soft_matching"):
    merge_tokens(jnp.ones((1, 9, 4)), plan)


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_pallas_kernels_stream_across_blocks(impl):
  """Small blocks so every kernel crosses block edges: the running max/argmax across B blocks
  (ties must stay with the earlier block), and groups that span several token blocks."""
  import importlib
  from tokenlab.kernels.token_merge import reference as ref
  kernels = importlib.import_module(f"tokenlab.kernels.token_merge.{impl}")
  rng = _rng(99)
  # One-hot rows: exact ties inside and across blocks.
  m = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=(2, 45))]
  m[:, :, 0] += rng.normal(size=(2, 45)).astype(np.float32) * (rng.random((2, 45)) < 0.3)
  m = ref.normalize(jnp.asarray(m))
  a, b = m[:, ::2], m[:, 1::2]
  want = ref.best_match(a, b, 1, 1)
  got = kernels.best_match(a, b, 1, 1, interpret=True, block_a=8, block_b=8)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6)
  # Long and short groups over 8-token blocks, groups past num_groups dropped.
  x = jnp.asarray(rng.normal(size=(2, 61, 3)).astype(np.float32))
  w = jnp.asarray(rng.uniform(0.5, 1.5, size=(2, 61)).astype(np.float32))
  bnd = rng.random((2, 61)) < 0.15
  bnd[:, 20:45] = False  # one group of 25+ tokens
  gid = ref.group_ids_from_boundaries(jnp.asarray(bnd))
  for m_groups in (int(gid.max()) + 1, 4):
    want = ref.segment_weighted_mean(x, w, gid, m_groups, sorted_ids=True)
    got = kernels.segment_mean(x, w, gid, m_groups, interpret=True, bm=8, bn=8)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6)


def test_benchmark_peer_computes_the_same_merge_and_bench_runs(capsys):
  from tokenlab.bench import token_merge as bench
  rng = _rng(31)
  x = jnp.asarray(rng.normal(size=(2, 40, 4)).astype(np.float32))
  metric = jnp.asarray(rng.normal(size=(2, 40, 6)).astype(np.float32))
  peer_x, peer_s = bench.plain_jnp_tome(x, metric, 12)
  ours_x, ours_s = merge_tokens(x, bipartite_soft_matching(metric, 12))
  for bi in range(2):  # same rows up to order (the peer keeps ToMe's [unmerged A, B] order)
    a = np.asarray(peer_x[bi])[np.argsort(np.asarray(peer_x[bi])[:, 0])]
    b = np.asarray(ours_x[bi])[np.argsort(np.asarray(ours_x[bi])[:, 0])]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Sizes are integer-valued float32 (counts of tokens): exact.
  np.testing.assert_array_equal(np.sort(np.asarray(peer_s), 1), np.sort(np.asarray(ours_s), 1))
  assert bench.main(["--quick", "--repeats", "1", "--cases", "tome,boundaries"]) == 0
  out = capsys.readouterr().out
  assert "plain_jnp_tome" in out and "copy of x" in out


@pytest.mark.parametrize("platform,module", [("cuda", "pallas_gpu"), ("tpu", "pallas_tpu")])
def test_pallas_kernels_lower_for_their_platform(platform, module):
  """Lowering to Triton IR / Mosaic MLIR runs on CPU: it catches ops the Triton or Mosaic
  lowering does not support (value slicing in Triton, for one). It does not run the kernels;
  Mosaic's layout passes and Triton's compilation happen only on the device."""
  import importlib
  kernels = importlib.import_module(f"tokenlab.kernels.token_merge.{module}")
  spec = jax.ShapeDtypeStruct
  a = spec((1, 256, 64), jnp.float32)
  x = spec((1, 512, 64), jnp.float32)
  w = spec((1, 512), jnp.float32)
  g = spec((1, 512), jnp.int32)
  m = spec((1, 512, 16), jnp.float32)
  cases = [(lambda a, b: kernels.best_match(a, b, 1, 0), (a, a)),
           (lambda x, w, g: kernels.segment_mean(x, w, g, 300), (x, w, g)),
           (lambda x, m, w: kernels.local_window_merge(x, m, w, 16, 8), (x, m, w))]
  for f, args in cases:
    text = jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    assert ("triton" in text) if platform == "cuda" else ("tpu_custom_call" in text)
