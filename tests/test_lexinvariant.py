"""Lexinvariant LMs (tokenlab.methods.lexinvariant): the invariances the paper rests on."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from tokenlab.methods.lexinvariant import (LexinvariantConfig, LexinvariantLM, MarkovSource,
                                           SourceIterator)

CFG = LexinvariantConfig(vocab_size=12, d_model=16, num_layers=2, num_heads=2, mlp_dim=32)


@pytest.fixture(scope="module")
def model():
  m = LexinvariantLM(CFG)
  rng = np.random.default_rng(0)
  x = rng.integers(0, CFG.vocab_size, (3, 21)).astype(np.int32)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:],
           "loss_mask": np.ones((3, 20), np.float32)}
  params = jax.jit(m.init)(jax.random.key(0), batch)
  m.apply = jax.jit(m.apply)      # eager op-by-op dispatch is slow on a busy CPU
  return m, params, batch


def test_renaming_the_vocabulary_with_renamed_embeddings_is_exact(model):
  """Input pi(x) with E' = E o pi^-1 gives identical residuals, logits permuted by pi, and
  the identical loss (the paper's invariance, exactly, for one embedding draw)."""
  m, params, batch = model
  table = m.embeddings(jax.random.key(3), 3)
  perm = np.random.default_rng(1).permutation(CFG.vocab_size)
  inv = np.argsort(perm)
  logits, res = m.apply(params, batch["inputs"], table)
  logits_p, res_p = m.apply(params, perm[batch["inputs"]], table[:, inv])
  for a, b in zip(res, res_p):
    np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_allclose(logits_p[..., perm], logits, atol=1e-5)
  nll = lambda lg, y: -jnp.take_along_axis(jax.nn.log_softmax(lg), y[..., None], -1).sum()
  np.testing.assert_allclose(nll(logits_p, perm[batch["targets"]]),
                             nll(logits, batch["targets"]), rtol=1e-5)


def test_loss_is_invariant_in_distribution_over_embedding_draws(model):
  """E's rows are i.i.d., so E o pi^-1 is another draw of E: the loss of pi(x), averaged over
  draws, matches the loss of x averaged over draws (and per-draw values do differ)."""
  m, params, batch = model
  perm = np.random.default_rng(2).permutation(CFG.vocab_size)
  pbatch = dict(batch, inputs=perm[batch["inputs"]], targets=perm[batch["targets"]])
  loss = jax.jit(jax.vmap(lambda r, b: m.loss(params, b, r)[0], in_axes=(0, None)))
  keys = jax.random.split(jax.random.key(5), 200)
  a, b = np.asarray(loss(keys, batch)), np.asarray(loss(keys, pbatch))
  assert np.abs(a - b).max() > 1e-3                     # not equal draw by draw
  se = np.sqrt(a.var() / len(a) + b.var() / len(b))
  assert abs(a.mean() - b.mean()) < 4 * se + 1e-6


def test_same_token_same_vector_within_a_row_fresh_across_rows_and_draws(model):
  m, params, batch = model
  t1 = np.asarray(m.embeddings(jax.random.key(7), 3))
  t2 = np.asarray(m.embeddings(jax.random.key(8), 3))
  assert t1.shape == (3, CFG.vocab_size, CFG.d_model)
  assert not np.allclose(t1[0], t1[1]) and not np.allclose(t1, t2)
  np.testing.assert_allclose(t1.mean(), 0.0, atol=0.1)
  np.testing.assert_allclose(t1.std(), 1.0, atol=0.1)
  # Within a row, every occurrence of a token enters with that row's vector: the first
  # layer's residual at a position depends on the token only through the table row.
  x = np.array([[4, 4, 4, 4]], np.int32)
  _, res = m.apply(params, x, jnp.asarray(t1[:1]))
  _, res2 = m.apply(params, x, jnp.asarray(t1[:1]).at[0, 5].set(0.0))   # unused row
  np.testing.assert_allclose(res[-1], res2[-1], atol=1e-6)


def test_standard_lm_is_not_invariant(model):
  m = LexinvariantLM(LexinvariantConfig(**{**CFG.__dict__, "lexinvariant": False}))
  _, _, batch = model
  params = jax.jit(m.init)(jax.random.key(0), batch)
  assert "embed" in params
  perm = np.random.default_rng(1).permutation(CFG.vocab_size)
  pbatch = dict(batch, inputs=perm[batch["inputs"]], targets=perm[batch["targets"]])
  rng = jax.random.key(0)
  loss = jax.jit(lambda b: m.loss(params, b, rng)[0])
  assert abs(float(loss(batch)) - float(loss(pbatch))) > 1e-4


def test_causal(model):
  m, params, batch = model
  table = m.embeddings(jax.random.key(3), 3)
  x = np.array(batch["inputs"])
  y = x.copy()
  y[:, 10:] = (y[:, 10:] + 1) % CFG.vocab_size
  a, _ = m.apply(params, x, table)
  b, _ = m.apply(params, y, table)
  np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)


def test_sample_shape_and_prompt_kept(model):
  m, params, _ = model
  prompt = jnp.zeros((2, 8), jnp.int32).at[:, :3].set(jnp.array([1, 2, 3]))
  out = jax.jit(lambda p, r: m.sample(p, prompt, jnp.array([3, 3]), r))(params,
                                                                        jax.random.key(0))
  assert out.shape == (2, 8)
  np.testing.assert_array_equal(out[:, :3], prompt[:, :3])
  assert int(out.max()) < CFG.vocab_size


def test_source_entropy_rate_matches_the_plug_in_nll():
  src = MarkovSource(vocab=8, order=2, branching=3, seed=3)
  x = src.sample(200, 300, np.random.default_rng(0)).astype(np.int64)
  ctx = x[:, :-2] * 8 + x[:, 1:-1]
  nll = -np.log(src.table[ctx, x[:, 2:]])
  assert np.isfinite(nll).all()                         # only allowed transitions occur
  assert abs(nll.mean() - src.entropy_rate()) < 0.03


def test_cipher_iterator_is_a_per_row_bijection_and_resumes():
  src = MarkovSource(vocab=8, order=2, branching=3, seed=3)
  it = SourceIterator(src, 4, 16, seed=1, cipher=True, with_plain=True)
  b = next(it)
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  for r in range(4):
    pairs = set(zip(b["plain_inputs"][r], b["inputs"][r]))
    assert len({p for p, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
  state = it.get_state()
  b2 = next(it)
  it2 = SourceIterator(src, 4, 16, seed=1, cipher=True, with_plain=True)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["inputs"], b2["inputs"])


def test_in_context_counters_are_lexinvariant_and_learn_an_order1_source():
  """The counters (baseline arms of the reproduction) involve no training: renaming the
  symbols leaves their loss unchanged, and on an order-1 source their bigram loss falls
  toward the entropy rate along the sequence."""
  from tokenlab.repro.lexinvariant import BI, UNI, _in_context_counts
  src = MarkovSource(vocab=8, order=1, branching=2, seed=3)
  x = src.sample(16, 129, np.random.default_rng(0))
  perm = np.random.default_rng(1).permutation(8)
  a = _in_context_counts(x[:, :-1], x[:, 1:], 8)
  b = _in_context_counts(perm[x[:, :-1]], perm[x[:, 1:]], 8)
  for k in (UNI, BI):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-12)
  bi = a[BI].mean(0)
  assert bi[-32:].mean() < bi[:16].mean() - 0.2
  assert bi[-32:].mean() < src.entropy_rate() + 0.3


def test_repro_quick(tmp_path):
  import json
  import tokenlab.repro
  report = tokenlab.repro.run("lexinvariant", workdir=str(tmp_path), quick=True)
  assert report.verdict == tokenlab.repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "lexinvariant.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} >= {"lex_beats_bigram_counts", "gap_shrinks"}
  rows = {(a, m): v for a, m, v, _, _ in report.rows}
  assert np.isfinite(rows[("lexinvariant", "loss, plain")])
  assert rows[("in-context bigram (counts)", "loss, plain")] < np.log(16)
