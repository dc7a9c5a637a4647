"""WECHSEL (tokenlab/methods/wechsel.py, tokenlab/transfer/word_vectors.py): the mechanism's
invariants on tiny arrays, and the quick reproduction."""

import json

import numpy as np
import pytest

from tokenlab.data.tokenizers import BytesTokenizer
from tokenlab.methods import wechsel as W
from tokenlab.transfer import word_vectors as wv


def _rotation(d, seed):
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q * np.sign(np.diag(r))


def test_procrustes_recovers_a_known_rotation():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(40, 8))
  q = _rotation(8, 1)
  np.testing.assert_allclose(wv.procrustes(a, a @ q), q, atol=1e-10)
  # With noise on the targets it is still the nearest orthogonal map, and orthogonal.
  w = wv.procrustes(a, a @ q + 0.01 * rng.normal(size=(40, 8)))
  np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-10)
  np.testing.assert_allclose(w, q, atol=0.02)


def test_neighbour_weights_are_a_softmax_over_the_top_k_by_cosine():
  rng = np.random.default_rng(2)
  src, tgt = rng.normal(size=(30, 6)), rng.normal(size=(12, 6))
  src[4] = 0.0      # a source token with no word vector is never a neighbour
  tgt[7] = 0.0      # a target token with none is not found
  idx, w, found = W.neighbour_weights(tgt, src, neighbors=5, temperature=0.1)
  assert idx.shape == w.shape == (12, 5)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-12)
  assert (np.diff(w, axis=1) <= 1e-15).all() and not (idx == 4).any()
  assert found.tolist() == [i != 7 for i in range(12)]
  cos = wv.normalize_rows(tgt) @ wv.normalize_rows(src).T
  cos[:, 4] = -np.inf
  for j in np.flatnonzero(found):
    want = np.argsort(-cos[j])[:5]
    np.testing.assert_array_equal(idx[j], want)
    np.testing.assert_allclose(w[j], np.exp(cos[j, want] / 0.1) / np.exp(cos[j, want] / 0.1).sum())
  # Temperature -> 0 puts all the weight on the nearest token.
  _, sharp, _ = W.neighbour_weights(tgt, src, neighbors=5, temperature=1e-4)
  np.testing.assert_allclose(sharp[found, 0], 1.0)


def test_a_token_with_identical_word_vectors_maps_to_itself():
  rng = np.random.default_rng(3)
  vecs = rng.normal(size=(20, 8))
  old_in, old_out = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
  (new_in, new_out), info = W.wechsel_rows([old_in, old_out], vecs, vecs, neighbors=1)
  np.testing.assert_array_equal(info["idx"][:, 0], np.arange(20))
  np.testing.assert_allclose(new_in, old_in, atol=1e-12)
  np.testing.assert_allclose(new_out, old_out, atol=1e-12)
  # With the paper's k = 10 the token itself is the first neighbour and weighs the most.
  _, info = W.wechsel_rows([old_in], vecs, vecs)
  np.testing.assert_array_equal(info["idx"][:, 0], np.arange(20))
  assert (info["weights"][:, 0] > info["weights"][:, 1]).all()


def test_tokens_without_a_vector_get_the_gaussian_fallback():
  rng = np.random.default_rng(4)
  src, tgt = rng.normal(size=(10, 5)), rng.normal(size=(3000, 5))
  tgt[::2] = 0.0
  old = rng.normal(loc=2.0, scale=0.5, size=(10, 3))
  (new,), info = W.wechsel_rows([old], src, tgt, neighbors=3, seed=0)
  lost = ~info["found"]
  np.testing.assert_allclose(new[lost].mean(0), old.mean(0), atol=0.05)
  np.testing.assert_allclose(new[lost].std(0), old.std(0), rtol=0.1)
  # Found rows are convex combinations of old rows: inside their per-dimension range.
  assert (new[~lost] >= old.min(0) - 1e-9).all() and (new[~lost] <= old.max(0) + 1e-9).all()


def test_cooccurrence_ppmi_and_svd():
  words, counts, m = wv.cooccurrence(["a b a .", "b c"], window=2)
  assert words == ("a", "b", ".", "c") and counts.tolist() == [2, 2, 1, 1]
  m = m.toarray()
  np.testing.assert_array_equal(m, m.T)
  # a-b: distance 1 twice in doc 1, a-a: distance 2 (both directions), b-c once.
  assert m[0, 1] == 2.0 and m[0, 0] == 1.0 and m[1, 3] == 1.0 and m[2, 3] == 0.0
  p = wv.ppmi(m).toarray()
  assert (p >= 0).all() and (p[m == 0] == 0).all()
  rng = np.random.default_rng(5)
  x = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 25))
  u, s = wv.randomized_svd(x, 4, seed=0)
  np.testing.assert_allclose(s, np.linalg.svd(x, compute_uv=False)[:4], rtol=1e-8)
  np.testing.assert_allclose(u.T @ u, np.eye(4), atol=1e-10)


def test_token_vectors_are_frequency_weighted_means_of_the_words_holding_them():
  vectors = wv.WordVectors(("ab", "b"), np.array([3, 1]), np.array([[1.0, 0.0], [0.0, 1.0]],
                                                                    np.float32))
  t = wv.token_vectors(BytesTokenizer(), vectors)
  np.testing.assert_allclose(t[ord("a")], [1.0, 0.0])
  np.testing.assert_allclose(t[ord("b")], [0.75, 0.25])      # (3 * ab + 1 * b) / 4
  np.testing.assert_allclose(t[ord(" ")], [0.75, 0.25])      # every word after a space
  assert not t[ord("z")].any()


def test_dictionary_alignment_translates_a_rotated_language():
  rng = np.random.default_rng(6)
  src = wv.WordVectors(tuple(f"w{i}" for i in range(30)), np.ones(30, int),
                       rng.normal(size=(30, 8)).astype(np.float32))
  q = _rotation(8, 7)
  tgt = wv.WordVectors(tuple(f"W{i}" for i in range(30)), np.ones(30, int),
                       (src.vectors @ q).astype(np.float32))
  # Case variants: 'W3' in the dictionary finds target 'W3'; 'w3' would find it title-cased.
  train = [(f"w{i}", f"w{i}") for i in range(20)]
  s, t = W.dictionary_pairs(train, src, tgt)
  np.testing.assert_array_equal(s, np.arange(20))
  np.testing.assert_array_equal(t, s)
  w = W.align(src, tgt, train)
  held = [(f"w{i}", f"W{i}") for i in range(20, 30)]
  assert W.translation_precision(src, tgt, w, held) == {1: 1.0, 10: 1.0}
  assert W.translation_precision(src, tgt, np.eye(8), held)[1] < 0.5


def test_experiment_variants():
  from tokenlab.config import load_config
  for size in ("tiny", "small", "base"):
    c = load_config(f"experiments/wechsel.py:size={size}")
    assert c.transfer.neighbors == 10 and c.transfer.temperature == 0.1
    assert c.transfer.target.endswith("@de") and c.model.name == "transformer_lm"


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import wechsel as mod
  report = repro.run("wechsel", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "wechsel.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  got = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  for arm in mod.INITS:
    assert np.isfinite(got[(arm, mod.ZS)])
  assert ("wechsel", mod.AD) not in got   # quick: zero-shot only (no trainer compile)
  # Zero-shot WECHSEL rows differ from both baselines' (the initialiser did something).
  assert got[("wechsel", mod.ZS)] not in (got[("random", mod.ZS)],
                                          got[("mean_subtokens", mod.ZS)])
  assert got[("wechsel alignment", "dictionary pairs used (train)")] > 100
  assert 0 < got[(mod.UNIFORM, mod.BPC)] < 20
