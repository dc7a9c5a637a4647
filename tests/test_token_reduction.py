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


# ---------------------------------------------------------------------------------------------
# One interface (`reduce_tokens`) and method token_reduction ("Token reduction should go
# beyond efficiency"): the toolbox entries' shared invariants, the clutter data option, the
# method's train-vs-test reduction, and the quick reproduction.


@pytest.fixture(scope="module")
def reduce_inputs():
  """(2, 17, 8) tokens (a protected lead token), their attention probs and logits, sizes."""
  rng = _rng(10)
  x = jnp.asarray(rng.normal(size=(2, 17, 8)).astype(np.float32))
  q = jnp.asarray(rng.normal(size=(2, 17, 2, 4)).astype(np.float32))
  logits = tr.attention_logits(q, q)
  sizes = jnp.asarray(rng.integers(1, 4, size=(2, 17)).astype(np.float32))
  return {"x": x, "metric": x, "probs": jax.nn.softmax(logits, -1), "logits": logits,
          "rng": jax.random.key(3), "sizes": sizes}


@pytest.mark.parametrize("name", tr.REDUCTIONS)
def test_reduce_tokens_one_interface_invariants(reduce_inputs, name):
  inp = reduce_inputs
  x, sizes = np.asarray(inp["x"]), np.asarray(inp["sizes"])
  kw = {k: inp[k] for k in ("metric", "probs", "logits", "rng")}
  # Ratio 0 is the identity, bit for bit.
  y0, s0, g0 = tr.reduce_tokens(name, inp["x"], 0, protected=1, **kw)
  np.testing.assert_array_equal(np.asarray(y0), x)
  np.testing.assert_array_equal(np.asarray(g0), np.tile(np.arange(17), (2, 1)))
  y, s, g = tr.reduce_tokens(name, inp["x"], 4, sizes=inp["sizes"], protected=1, window=4, **kw)
  y, s, g = np.asarray(y), np.asarray(s), np.asarray(g)
  assert y.shape == (2, 13, 8) and s.shape == (2, 13) and g.shape == (2, 17)
  # The protected token survives unchanged, first, alone.
  np.testing.assert_array_equal(y[:, 0], x[:, 0])
  assert np.all(g[:, 0] == 0) and np.all(g[:, 1:] != 0)
  for b in range(2):
    live = g[b] >= 0
    if name in ("tome", "window"):
      # Merges keep every token and conserve mass: sum of size * value is unchanged, and a
      # group's size is the summed size of its members.
      assert live.all()
      np.testing.assert_allclose((y[b] * s[b, :, None]).sum(0), (x[b] * sizes[b, :, None]).sum(0),
                                 rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(np.bincount(g[b], weights=sizes[b], minlength=13), s[b],
                                 rtol=1e-6)
    else:
      # Pruning drops exactly 4 tokens and returns the survivors exactly, in order.
      assert (~live).sum() == 4
      np.testing.assert_array_equal(y[b], x[b][live])
      np.testing.assert_array_equal(s[b], sizes[b][live])
      np.testing.assert_array_equal(g[b][live], np.arange(13))
  if name == "window":
    # No merge crosses a window of 4 (tokens 1..16 after the protected one).
    assert all(len({(i - 1) // 4 for i in np.flatnonzero(g[b] == k)}) == 1
               for b in range(2) for k in range(1, 13))


def test_reduce_tokens_errors_name_the_fix(reduce_inputs):
  x = reduce_inputs["x"]
  with pytest.raises(TokenlabError, match="unknown reduction"):
    tr.reduce_tokens("prune", x, 2)
  with pytest.raises(TokenlabError, match="needs probs"):
    tr.reduce_tokens("attention", x, 2)
  with pytest.raises(TokenlabError, match="multiple of 4"):
    tr.reduce_tokens("window", x, 3, metric=x, protected=1, window=4)


def test_clutter_is_seeded_solid_squares_and_allowed_where_labels_survive():
  from tokenlab import data
  from tokenlab.data import pipeline
  from tokenlab.errors import ConfigError
  img = np.zeros((32, 32, 3), np.float32)
  a = pipeline.add_clutter(img, np.random.default_rng(0), 3)
  b = pipeline.add_clutter(img, np.random.default_rng(0), 3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(pipeline.add_clutter(img, np.random.default_rng(0), 0), img)
  changed = np.any(a != img, axis=-1)
  # Three solid 4x4 squares (they may overlap): 16 to 48 pixels, each of a non-black colour
  # with channels 0 or 1; the input itself is not modified.
  assert 16 <= changed.sum() <= 48
  assert set(np.unique(a)) <= {0.0, 1.0} and np.all(a[changed].max(-1) == 1.0)
  assert np.all(img == 0)
  grey = pipeline.add_clutter(np.zeros((28, 28, 1), np.float32), np.random.default_rng(1), 2)
  assert set(np.unique(grey)) == {0.0, 1.0} and 9 <= grey.sum() <= 18   # white 3x3 squares
  aug = pipeline.AugmentImage(clutter=2)
  counts = {int(np.any(aug.random_map({"image": img}, np.random.default_rng(i))["image"] != 0))
            for i in range(20)}
  assert counts == {0, 1}                       # 0..2 distractors: sometimes none
  data.validate_data_config({"name": "shapes", "augment": "clutter"})
  data.validate_data_config({"name": "mnist", "augment": "crop,clutter"})
  with pytest.raises(ConfigError, match="does not allow"):
    data.validate_data_config({"name": "photos", "augment": "clutter"})


def test_repro_patch_masks_and_kept_fraction():
  from tokenlab.repro.token_reduction import kept_fraction, patch_masks
  clean = np.zeros((1, 8, 8, 3), np.float32)
  clean[0, 0:4, 0:4] = 1.0                      # object in patch 0
  noisy = clean.copy()
  noisy[0, 5, 6] = 0.3                          # a distractor pixel in patch 3
  dis, obj = patch_masks(clean, noisy, 4)
  np.testing.assert_array_equal(dis, [[False, False, False, True]])
  np.testing.assert_array_equal(obj, [[True, False, False, False]])
  gid = np.array([[0, 1, 2, -1, -1]])           # class token, patch 0 kept, patch 3 dropped
  assert kept_fraction(gid, obj) == 1.0 and kept_fraction(gid, dis) == 0.0


def test_method_config_and_token_counts():
  from tokenlab.errors import ConfigError
  from tokenlab.methods.token_reduction import TokenReduction, TokenReductionConfig
  method = TokenReduction(TokenReductionConfig(num_layers=4, r=8))
  assert method.token_counts(64) == [57, 49, 41, 33]      # the reproduction's schedule
  assert method.variant(r=0).token_counts(64) == [65] * 4
  assert method.variant(reduction="window", r=4).token_counts(64) == [61, 57, 53, 49]
  with pytest.raises(ConfigError, match="reduction"):
    method.variant(reduction="prune")
  with pytest.raises(ConfigError, match="r >= 0"):
    method.variant(r=-1)


def test_pagerank_and_window_run_inside_a_block_with_shared_weights():
  # The method trains and tests any reduction through ToMeBlock; the two entries new there.
  x = jnp.asarray(_rng(11).normal(size=(2, 17, 16)).astype(np.float32))
  block = tr.ToMeBlock(num_heads=2, mlp_dim=32, r=4, protected=1, reduction="window", window=8)
  params = jax.jit(block.init)(jax.random.key(0), x)
  y, sizes, gid = jax.jit(block.apply)(params, x)
  # 16 unprotected tokens = 2 windows of 8, 2 pairs merged in each; sizes count members.
  g = np.asarray(gid)
  assert y.shape == (2, 13, 16) and np.all(g[:, 0] == 0)
  np.testing.assert_array_equal(np.asarray(sizes).sum(1), [17, 17])
  assert all(len({(t - 1) // 8 for t in np.flatnonzero(g[b] == k)}) == 1
             for b in range(2) for k in range(1, 13))
  pr = tr.ToMeBlock(num_heads=2, mlp_dim=32, r=4, protected=1, reduction="pagerank")
  y2, _, kept = jax.jit(pr.apply)(params, x)          # same parameters, another reduction
  k = np.asarray(kept)
  assert y2.shape == (2, 13, 16) and np.all(k[:, 0] == 0) and np.all(np.diff(k, axis=1) > 0)


def test_repro_quick(tmp_path):
  from tokenlab import repro
  result = repro.run("token_reduction", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  values = {(a, m): v for a, m, v, _, _ in result.rows}
  assert 0.0 <= values["vit (no reduction)", "accuracy clean"] <= 1.0
  assert ("attention prune trained r=8", "distractor patches kept") in values
  assert (tmp_path / "repro.md").exists() and (tmp_path / "token_reduction_kept.png").exists()
