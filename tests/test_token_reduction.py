"""Token reduction toolbox: ToMe in a ViT block, pruning, AIM's PageRank and schedule,
baselines. Checks: ratio 0 is identity, weighted merges conserve mass, merging removes
exactly r tokens, PageRank stays a distribution, protected tokens survive."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tokenlab.errors import TokenlabError
from tokenlab.kernels import unmerge
from tokenlab.nn import token_reduction as tr
from tokenlab.nn.attention import dot_product_attention


def _rng(seed):
  return np.random.default_rng(seed)


def test_proportional_attention_equals_attention_over_duplicates():
  # Attention over [a, a, b] (sizes 1) equals attention over [a, b] with sizes [2, 1]: the
  # property proportional attention exists for.
  rng = _rng(0)
  q = jnp.asarray(rng.normal(size=(1, 3, 2, 4)).astype(np.float32))
  kv = rng.normal(size=(1, 2, 2, 4)).astype(np.float32)
  k2, v2 = jnp.asarray(kv), jnp.asarray(kv[:, ::-1].copy())
  k3 = jnp.concatenate([k2[:, :1], k2], axis=1)
  v3 = jnp.concatenate([v2[:, :1], v2], axis=1)
  full = dot_product_attention(q, k3, v3)
  bias = tr.proportional_attention_bias(jnp.asarray([[2.0, 1.0]]))
  merged = dot_product_attention(q, k2, v2, bias=bias)
  np.testing.assert_allclose(np.asarray(merged), np.asarray(full), rtol=1e-5, atol=1e-6)
  unweighted = dot_product_attention(q, k2, v2)
  assert not np.allclose(np.asarray(unweighted), np.asarray(full), atol=1e-4)


def test_tome_block_merges_r_tokens_and_tracks_sizes():
  rng = _rng(1)
  x = jnp.asarray(rng.normal(size=(2, 17, 16)).astype(np.float32))
  block = tr.ToMeBlock(num_heads=2, mlp_dim=32, r=5, protected=1)
  params = jax.jit(block.init)(jax.random.key(0), x)
  y, sizes, plan = jax.jit(block.apply)(params, x)
  assert y.shape == (2, 12, 16) and sizes.shape == (2, 12)
  # Sizes are token counts (integer-valued float32, exact sums): exact.
  np.testing.assert_array_equal(np.asarray(sizes).sum(1), [17, 17])
  assert int(plan.group_ids[0, 0]) == 0 and np.all(np.asarray(plan.group_ids)[:, 1:] > 0)
  # r = 0 with the same parameters is the plain block (log 1 = 0 bias changes nothing).
  plain = tr.ToMeBlock(num_heads=2, mlp_dim=32, r=0)
  y0, s0, p0 = jax.jit(plain.apply)(params, x)
  y0b, _, _ = jax.jit(plain.apply)(params, x, jnp.ones((2, 17)))
  assert p0 is None and s0 is None and y0.shape == x.shape
  np.testing.assert_allclose(np.asarray(y0b), np.asarray(y0), rtol=1e-5, atol=1e-5)


def test_tome_encoder_group_ids_unmerge_to_input_length():
  rng = _rng(2)
  x = jnp.asarray(rng.normal(size=(2, 33, 16)).astype(np.float32))
  enc = tr.ToMeEncoder(num_layers=3, num_heads=2, mlp_dim=32, r=[8, 0, 6], protected=1)
  params = jax.jit(enc.init)(jax.random.key(1), x)
  y, sizes, gid = jax.jit(enc.apply)(params, x)
  assert y.shape == (2, 33 - 14, 16)
  np.testing.assert_array_equal(np.asarray(sizes).sum(1), [33, 33])
  g = np.asarray(gid)
  # Sizes are the number of input tokens in each final group.
  for bi in range(2):
    np.testing.assert_array_equal(np.bincount(g[bi], minlength=19), np.asarray(sizes[bi]))
  assert unmerge(y, gid).shape == (2, 33, 16)
  with pytest.raises(TokenlabError, match="one per layer"):
    tr.parse_r(3, [1, 2])


def test_tome_reduce_keeps_a_quarter_and_conserves_mass():
  rng = _rng(3)
  x = jnp.asarray(rng.normal(size=(2, 64, 8)).astype(np.float32))
  y, sizes, gid = tr.tome_reduce(x, (32, 16))
  assert y.shape == (2, 16, 8)
  np.testing.assert_allclose(np.asarray((y * sizes[..., None]).sum(1)), np.asarray(x.sum(1)),
                             rtol=1e-4, atol=1e-4)
  # Each token's final group holds exactly `size` tokens.
  for bi in range(2):
    np.testing.assert_array_equal(np.bincount(np.asarray(gid[bi]), minlength=16),
                                  np.asarray(sizes[bi]))
  y0, s0, _ = tr.tome_reduce(x, (0,))
  # Exact: r = 0 merges nothing (x * 1 / 1 + 0); a bit-identical identity is the property.
  np.testing.assert_array_equal(np.asarray(y0), np.asarray(x))


def test_prune_by_attention_keeps_most_attended_in_order():
  rng = _rng(4)
  b, h, n = 2, 3, 10
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, h, n, n)).astype(np.float32)), -1)
  x = jnp.asarray(rng.normal(size=(b, n, 5)).astype(np.float32))
  kept, idx = tr.prune_by_attention(x, probs, 4, protected=1, score="cls")
  cls = np.asarray(probs)[:, :, 0, :].mean(1)
  for bi in range(b):
    order = [i for i in np.argsort(-cls[bi][1:], kind="stable")[:3] + 1]
    assert list(np.asarray(idx[bi])) == sorted([0] + order)
  # Exact: pruning gathers rows, no arithmetic.
  np.testing.assert_array_equal(np.asarray(kept), np.take_along_axis(np.asarray(x),
                                                                     np.asarray(idx)[..., None], 1))
  same, _ = tr.prune_by_attention(x, probs, n, score="received")  # ratio 0: identity
  np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
  with pytest.raises(TokenlabError, match="score"):
    tr.prune_by_attention(x, probs, 4, score="max")


def test_pagerank_is_a_distribution_and_matches_power_iteration():
  rng = _rng(5)
  logits = rng.normal(size=(2, 3, 7, 7)).astype(np.float32)
  causal = np.tril(np.ones((7, 7), bool))
  logits = np.where(causal, logits, -np.inf)
  imp = tr.pagerank_importance(jnp.asarray(logits), temperature=0.1, iters=5)
  m = np.where(causal, np.exp(logits / 0.1 - (logits / 0.1).max(-1, keepdims=True)), 0.0)
  m = m / m.sum(-1, keepdims=True)
  pi = np.full((2, 3, 7), 1 / 7)
  for _ in range(5):
    pi = np.einsum("bhi,bhij->bhj", pi, m)
  np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(tr.pagerank(jnp.asarray(m, jnp.float32))), pi,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(imp), np.sqrt((pi ** 2).mean(1)), rtol=1e-4, atol=1e-6)


def test_aim_schedule_and_prune_protect_text_tokens():
  sched = tr.aim_retain_schedule(8)
  assert sched[:4] == [1.0] * 4 and sched[-1] == 0.0
  assert all(a >= b for a, b in zip(sched, sched[1:]))
  assert tr.retain_count(10, 0.25) == 2 and tr.retain_count(10, 1.0) == 10
  rng = _rng(6)
  n = 9
  logits = jnp.asarray(rng.normal(size=(1, 2, n, n)).astype(np.float32))
  # Everyone attends to token 4 -> it is the most important visual token.
  logits = logits.at[:, :, :, 4].add(10.0)
  text = jnp.asarray([False] * 6 + [True] * 3)
  x = jnp.arange(n, dtype=jnp.float32)[None, :, None]
  kept, idx = tr.aim_prune(x, logits, 4, protected_mask=text)
  assert list(np.asarray(idx[0])) == [4, 6, 7, 8]


def test_baselines_random_and_average_pool():
  rng = _rng(7)
  x = jnp.asarray(rng.normal(size=(2, 16, 3)).astype(np.float32))
  kept, idx = tr.random_prune(x, 6, jax.random.key(0), protected=2)
  i = np.asarray(idx)
  assert kept.shape == (2, 6, 3) and np.all(i[:, :2] == [0, 1]) and np.all(np.diff(i, axis=1) > 0)
  pooled, gid, counts = tr.avg_pool_tokens(x[:, :15], 4)
  assert pooled.shape == (2, 4, 3)
  np.testing.assert_array_equal(np.asarray(counts), [[4, 4, 4, 3]] * 2)
  np.testing.assert_allclose(np.asarray(pooled)[:, 3], np.asarray(x)[:, 12:15].mean(1),
                             rtol=1e-6)
  pooled2, gid2, counts2 = tr.avg_pool_tokens(x, 2, grid=(4, 4))
  np.testing.assert_allclose(np.asarray(pooled2)[:, 0], np.asarray(x)[:, [0, 1, 4, 5]].mean(1),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(unmerge(pooled2, gid2)).sum(1) / 4,
                             np.asarray(pooled2).sum(1), rtol=1e-5)
  with pytest.raises(TokenlabError, match="grid"):
    tr.avg_pool_tokens(x, 3, grid=(4, 4))
