"""Text2Token (tokenlab.methods.text2token): the topic corpus, the token targets (distributions,
order invariance), the KL loss's minimum, InfoNCE, kNN accuracy, the model-derived targets'
path through the data hook, and the quick reproduction."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.data.topic_corpus import TopicCorpusTask, bayes_accuracy, make_topic_corpus
from tokenlab.methods import text2token as t2t

# Jitted once each: eager jnp compiles every op on its own (slower at the tests' -O0).
kl = jax.jit(t2t.token_target_loss)
nce = jax.jit(t2t.info_nce, static_argnums=2)
densify = jax.jit(t2t.densify, static_argnums=2)
TASK = TopicCorpusTask(num_topics=4, words_per_topic=8, function_words=6, length=10,
                       num_train=200, num_test=100, seed=3)


@pytest.fixture(scope="module")
def corpus():
  return make_topic_corpus(TASK)


def test_corpus_is_deterministic_with_exact_topic_laws(corpus):
  again = make_topic_corpus(TASK)
  np.testing.assert_array_equal(corpus.train_tokens, again.train_tokens)
  np.testing.assert_array_equal(corpus.test_labels, again.test_labels)
  other = make_topic_corpus(dataclasses.replace(TASK, seed=4))
  assert not np.array_equal(corpus.train_tokens, other.train_tokens)
  laws = corpus.word_laws
  assert laws.shape == (4, TASK.vocab_size) and laws[:, 0].max() == 0.0   # no padding
  np.testing.assert_allclose(laws.sum(1), 1.0)
  # Function words: the same law in every topic; a topic's own words: likelier in it.
  np.testing.assert_array_equal(laws[:, 1:7], np.broadcast_to(laws[0, 1:7], (4, 6)))
  own = slice(7 + 8, 7 + 16)                                    # topic 1's block
  assert (laws[1, own] > laws[0, own]).all()
  assert corpus.train_tokens.min() >= 1 and corpus.train_tokens.max() < TASK.vocab_size
  # Texts of a topic use its words far more than other topics' texts do.
  in_own = (corpus.train_tokens >= 15) & (corpus.train_tokens < 23)
  assert in_own[corpus.train_labels == 1].mean() > 3 * in_own[corpus.train_labels == 0].mean()
  assert bayes_accuracy(corpus) > 0.5                           # chance is 0.25


def test_data_targets_are_order_invariant_distributions(corpus):
  idf = t2t.idf_weights(corpus.train_tokens, TASK.vocab_size)
  assert idf[1] < idf[7]          # the most frequent function word weighs less than content
  x = corpus.test_tokens[:20]
  p = t2t.data_targets(x, idf)
  assert p.shape == (20, TASK.vocab_size) and p.dtype == np.float32
  assert p.min() >= 0 and p[:, 0].max() == 0.0
  np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
  perm = np.random.default_rng(0).permuted(x, axis=1)          # shuffle words inside texts
  np.testing.assert_array_equal(t2t.data_targets(perm, idf), p)
  # Mass exactly on the text's own tokens, proportional to count x idf.
  row = x[0]
  assert set(np.flatnonzero(p[0])) == set(row.tolist())
  w = np.bincount(row, minlength=TASK.vocab_size) * idf
  np.testing.assert_allclose(p[0], w / w.sum(), rtol=1e-5)
  # With padding (id 0) in a text: it gets no mass.
  padded = np.concatenate([x[:2, :6], np.zeros((2, 4), x.dtype)], 1)
  assert t2t.data_targets(padded, idf)[:, 0].max() == 0.0
  # The sparse form the batches carry scatters back to the same distributions.
  for texts in (x, padded):
    ids, w = t2t.sparse_data_targets(texts, idf)
    np.testing.assert_allclose(np.asarray(densify(ids, w, TASK.vocab_size)),
                               t2t.data_targets(texts, idf), atol=1e-6)


def test_model_targets_are_distributions():
  probs = jax.nn.softmax(jnp.asarray(np.random.default_rng(1).normal(size=(3, 5, 7)) * 3), -1)
  idf = jnp.asarray(np.linspace(1.0, 2.0, 7), jnp.float32)
  p = np.asarray(jax.jit(t2t.model_targets)(probs, idf))
  assert p.shape == (3, 7) and p.min() >= 0 and p[:, 0].max() == 0.0
  np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
  expected = np.asarray(probs).mean(1) * np.asarray(idf)
  expected[:, 0] = 0
  np.testing.assert_allclose(p, expected / expected.sum(1, keepdims=True), rtol=1e-5)
  ids, w = jax.jit(t2t.top_k_targets, static_argnums=1)(jnp.asarray(p), 3)   # stored form
  np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.sort(np.asarray(ids), 1), np.sort(np.argsort(-p, 1)[:, :3], 1))


def test_kl_loss_is_minimised_where_prediction_equals_target():
  rng = np.random.default_rng(2)
  target = rng.dirichlet(np.ones(9), size=4).astype(np.float32)
  target[0, :3] = 0.0                                            # zeros: 0 log 0 = 0
  target[0] /= target[0].sum()
  at_target = np.log(np.maximum(target, 1e-30)) + 5.0           # softmax(.) == target
  np.testing.assert_allclose(np.asarray(kl(at_target, target)), 0.0,
                             atol=1e-5)
  for _ in range(3):
    other = at_target + rng.normal(size=at_target.shape).astype(np.float32)
    assert (np.asarray(kl(other, target)) > 1e-4).all()
  grad = jax.jit(jax.grad(lambda z: kl(z, jnp.asarray(target)).sum()))(
      jnp.asarray(np.log(target + 1e-30)))
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-5)   # a stationary point


def test_info_nce_prefers_matched_views():
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  matched = float(nce(a, a + 0.01, 0.1).mean())
  shuffled = float(nce(a, jnp.roll(a, 1, axis=0), 0.1).mean())
  assert matched < 0.5 < shuffled
  same = jnp.ones((6, 8))                                        # no signal: log(batch)
  np.testing.assert_allclose(np.asarray(nce(same, same, 0.1)), np.log(6), rtol=1e-5)


def test_knn_accuracy_by_hand():
  ref = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], float)
  labels = np.array([0, 0, 1, 1, 1])
  query = np.array([[1, 0.05], [0.05, 1], [0.8, 0.6]])
  assert t2t.knn_accuracy(ref, labels, query, np.array([0, 1, 0]), 1) == 1.0
  # k = 5: every query sees all references, the majority label is 1.
  assert t2t.knn_accuracy(ref, labels, query, np.array([1, 1, 1]), 5) == 1.0
  assert t2t.knn_accuracy(ref * 7.0, labels, query, np.array([0, 1, 0]), 1) == 1.0  # cosine


def test_model_targets_reach_the_batches_through_the_data_hook(tmp_path):
  """The reproduction writes model-derived top-k targets to an .npz; `targets=PATH` feeds
  them to the trainer's batches, which the loss scatters onto the vocabulary."""
  from tokenlab.config import load_config
  c = load_config("experiments/text2token.py:size=tiny,objective=model")
  task = t2t.task_of(c.task)
  rng = np.random.default_rng(4)
  k, n, m = c.task.target_top_k, task.num_train, task.num_test
  ids = np.stack([rng.choice(task.vocab_size, k, replace=False) for _ in range(n + m)])
  w = rng.dirichlet(np.ones(k), n + m)
  path = str(tmp_path / "t.npz")
  np.savez(path, train_ids=ids[:n], train_weights=w[:n], test_ids=ids[n:], test_weights=w[n:])
  c.task.targets = path
  train_fn, eval_fn = t2t.iterator_fns(c)
  batch = next(train_fn(4, 0))
  tokens = t2t.corpus(task).train_tokens
  idx = [np.flatnonzero((tokens == row).all(1))[0] for row in batch["tokens"]]
  np.testing.assert_array_equal(batch["target_ids"], ids[idx])
  np.testing.assert_allclose(batch["target_weights"], w[idx], rtol=1e-6)
  assert len(list(eval_fn(4, 0))) == c.train.eval_batches
  assert next(train_fn(4, 0))["tokens"].tolist() == batch["tokens"].tolist()   # (seed, step)
  # The data-driven source: the text's own tokens, idf-weighted.
  c.task.targets = "data"
  data_batch = next(t2t.iterator_fns(c)[0](4, 0))
  np.testing.assert_array_equal(data_batch["target_ids"], batch["tokens"])


def test_bad_objective_names_the_fix():
  from tokenlab.errors import ConfigError
  with pytest.raises(ConfigError, match="objective"):
    t2t.Text2Token(t2t.Text2TokenConfig(objective="mlm"))


def test_repro_quick(tmp_path):
  """The quick reproduction: the data-driven arm trained 2 steps through the real trainer,
  embedded and judged by kNN with the count baselines (no untrained arm: one compile less)."""
  from tokenlab import repro
  report = repro.run("text2token", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  rows = {(r[0], r[1]): r[2] for r in report.rows}
  for arm in ("text2token data", "TF-IDF (counts)",
              "bag of tokens (counts)", "chance (majority topic)"):
    for metric in ("kNN@1 accuracy", "kNN@5 accuracy"):
      assert 0.0 <= rows[(arm, metric)] <= 1.0
  assert np.isfinite(rows[("text2token data", "final train loss")])
  assert (tmp_path / "seed0" / "data" / "config.json").exists()
  assert (tmp_path / "text2token_knn.png").exists() and (tmp_path / "repro.md").exists()
