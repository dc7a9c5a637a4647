"""DiscRec (tokenlab.methods.discrec): semantic IDs, the within-item mask, item positions,
constrained beam search, ranking metrics, the item-graph task and the quick reproduction."""

import jax
import numpy as np
import pytest

from tokenlab.data.item_graph import ItemGraphTask, make_item_graph, sample_histories
from tokenlab.methods import discrec as dr

TASK = ItemGraphTask(num_items=64, num_communities=4, num_categories=8, num_users=32,
                     history=4, seed=3)


@pytest.fixture(scope="module")
def tiny():
  """The tiny experiment's config, data, method and random parameters (no compile)."""
  from tokenlab import registry
  from tokenlab.config import load_config
  from tokenlab.method import random_params
  c = load_config("experiments/discrec.py:size=tiny")
  data = dr.rec_data(c.task)
  method = registry.build_method(c.model)
  batch = next(dr.RecIterator(data, 2, 0))
  return c, data, method, random_params(method, batch, scale=0.2), batch


def test_semantic_ids_are_unique_per_item_and_tokens_per_level():
  graph = make_item_graph(TASK)
  ids = dr.semantic_ids(graph.features, levels=3, k=4, dedup=16)
  assert ids.shape == (64, 4)
  assert len({tuple(r) for r in ids}) == 64                    # one ID per item
  assert ids[:, :3].max() < 4 and ids.min() >= 0
  tokens = dr.item_tokens(ids, 4)
  for level in range(4):                                       # disjoint token ranges
    assert tokens[:, level].min() >= 4 * level
    assert level == 3 or tokens[:, level].max() < 4 * (level + 1)
  assert tokens.max() < dr.vocab_size(3, 4, 16)
  with pytest.raises(ValueError, match="dedup"):
    dr.semantic_ids(graph.features, levels=1, k=2, dedup=2)    # 2 cells cannot hold 64 items


def test_residual_kmeans_levels_reduce_the_residual():
  x = make_item_graph(TASK).features.astype(np.float64)
  err = []
  for levels in (1, 2, 3):
    codes = dr.residual_kmeans(x, levels, 4, seed=0)
    recon = np.zeros_like(x)
    residual = x.copy()
    for level in range(levels):     # the same centres: recompute them level by level
      centres = np.stack([residual[codes[:, level] == j].mean(0) if np.any(codes[:, level] == j)
                          else np.zeros(x.shape[1]) for j in range(4)])
      recon += centres[codes[:, level]]
      residual = x - recon
    err.append(np.mean(residual ** 2))
  assert err[0] > err[1] > err[2]
  np.testing.assert_array_equal(dr.residual_kmeans(x, 2, 4, 0), dr.residual_kmeans(x, 2, 4, 0))


def test_item_positions_are_shared_within_an_item():
  item, level = dr.token_layout(11, 4)
  np.testing.assert_array_equal(item, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(level, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2])


def test_within_item_branch_never_sees_another_items_codes(tiny):
  """The collaborative branch's output at a token changes with an earlier code of its own item
  and never with a code of another item (before or after it)."""
  c, _, method, params, _ = tiny
  emb = dr.DiscRecEmbedding(method.config)
  p = {"params": params["embedding"]}
  branch = jax.jit(lambda t: emb.apply(p, t, return_gate=True))
  tokens = np.array([[0, 5, 10, 16, 1, 6, 11, 17, 2, 7, 12, 18]], np.int32)
  base, gate = map(np.asarray, branch(tokens))
  np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-5)     # a softmax over the branches
  changed = tokens.copy()
  changed[0, 5] = 4 + 3                                        # item 1's level-1 code
  out = np.asarray(branch(changed)[0])
  diff = np.abs(out - base).max(-1)[0]
  assert np.all(diff[:4] == 0) and np.all(diff[8:] == 0)      # items 0 and 2: untouched
  assert diff[4] == 0                                          # causal: code 0 of item 1 too
  assert np.all(diff[5:8] > 0)                                 # the rest of item 1 sees it


def test_tiger_ablation_is_the_token_embedding(tiny):
  c, _, _, _, batch = tiny
  from tokenlab import registry
  from tokenlab.method import random_params
  cfg = c.model.to_dict() | {"collaborative": False}
  tiger = registry.build_method(type(c.model)(cfg))
  params = random_params(tiger, batch)
  assert set(params["embedding"]) == {"embed"}
  out = dr.DiscRecEmbedding(tiger.config).apply({"params": params["embedding"]},
                                                np.array([[1, 2]], np.int32))
  np.testing.assert_allclose(out[0], params["embedding"]["embed"]["embedding"][[1, 2]])


def test_constrained_beam_search_returns_only_valid_items_best_first():
  ids = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1], [2, 2, 0]])
  tokens = dr.item_tokens(ids, 3)
  trie = dr.CodeTrie.build(tokens, 9)
  rng = np.random.default_rng(0)
  table = rng.normal(size=(9, 9)) * 3        # a bigram "model": logits depend on the token

  def logits_fn(t):
    return table[t]
  context = np.array([[1, 4], [5, 7]], np.int32)
  items, scores = dr.constrained_beam_search(logits_fn, context, trie, beam=7)
  for b in range(2):
    valid = items[b][items[b] >= 0]
    assert sorted(valid) == list(range(5))                     # all 5 items, no invalid one
    assert np.all(items[b][5:] == -1) and np.all(np.isneginf(scores[b][5:]))
    logp = table - np.logaddexp.reduce(table, -1, keepdims=True)
    exact = [logp[context[b, -1], tokens[i, 0]] + logp[tokens[i, 0], tokens[i, 1]]
             + logp[tokens[i, 1], tokens[i, 2]] for i in valid]
    np.testing.assert_allclose(scores[b][:5], exact, rtol=1e-9)
    assert np.all(np.diff(scores[b][:5]) <= 0)                 # best first
  with pytest.raises(ValueError, match="same semantic ID"):
    dr.CodeTrie.build(np.array([[0, 3], [0, 3]]), 6)


def test_ranking_metrics():
  ranked = np.array([[5, 1, 2], [3, 4, 6], [7, 8, 9]])
  m = dr.ranking_metrics(ranked, np.array([5, 6, 0]), k=3)
  assert m["Recall@3"] == pytest.approx(2 / 3)
  assert m["NDCG@3"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
  r = dr.random_ranking_metrics(100, 10)
  assert r["Recall@10"] == 0.1 and 0 < r["NDCG@10"] < 0.1


def test_item_graph_is_deterministic_and_planted():
  g, (h, comm) = make_item_graph(TASK), sample_histories(make_item_graph(TASK), TASK)
  h2, _ = sample_histories(make_item_graph(TASK), TASK)
  np.testing.assert_array_equal(h, h2)
  assert h.shape == (32, 5) and np.all(h[:, 1:] != h[:, :-1])  # never stays on an item
  # Each step is a successor of the last item or an item of the user's community.
  ok = [(b in g.successor[a]) or g.community[b] == comm[u]
        for u in range(32) for a, b in zip(h[u, :-1], h[u, 1:])]
  assert all(ok)
  law = g.next_item_law(int(h[0, 0]), int(comm[0]), TASK.p_follow)
  assert law.sum() == pytest.approx(1.0) and law[h[0, 0]] == 0
  # Features reveal the category, not the community.
  assert len(np.unique(g.community)) == 4 and len(np.unique(g.category)) <= 8


def test_iterator_and_loss(tiny):
  c, data, method, params, _ = tiny
  it = dr.RecIterator(data, 4, seed=0)
  batch = next(it)
  state = it.get_state()
  again = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["inputs"], again["inputs"])
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  val = next(dr.RecIterator(data, 4, 0, "validation", num_batches=1))
  assert val["loss_mask"].sum(1).tolist() == [4] * 4           # the held-out item's 4 codes
  np.testing.assert_array_equal(val["targets"][:, -4:], data.tokens[data.test_target[:4]])
  loss, metrics = jax.jit(method.loss)(params, batch, jax.random.key(0))
  assert np.isfinite(float(loss)) and method.flops_per_token(15) > 0


def test_experiment_variants():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=small,collab=0", "size=base"):
    c = load_config(f"experiments/discrec.py:{arg}")
    assert c.model.vocab_size == 3 * c.task.codes + c.task.dedup
    assert c.model.name == "discrec"


def test_repro_quick(tmp_path):
  import json
  from tokenlab import repro
  report = repro.run("discrec", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "discrec.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {"discrec_higher_recall", "network_beats_counts"} <= {c["name"] for c in data["checks"]}
  rows = {(a, m): v for a, m, v, _, _ in report.rows}
  assert rows[("discrec", "valid items in the beam")] == 1.0
  assert rows[("random", "Recall@10")] == pytest.approx(10 / 64)
  assert 0 <= rows[("discrec", "NDCG@10")] <= rows[("discrec", "Recall@10")] <= 1
