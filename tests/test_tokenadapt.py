"""TokenAdapt (tokenlab/methods/tokenadapt.py): the initialiser's invariants on tiny
tokenizers (pure numpy), and the quick reproduction."""

import json

import numpy as np
import pytest

from tokenlab.data.tokenizers import BPETokenizer, SentencePieceTokenizer
from tokenlab.errors import TokenlabError
from tokenlab.methods import tokenadapt as ta
from tokenlab.transfer.initializers import (Embeddings, decompose, get_initializer,
                                            shared_tokens, vocab_bytes)

DOCS = [s.encode() for s in (
    "Delete selected items", "Add another item", "the items were deleted", "Select all items",
    "Save and add another", "Save and continue editing", "Change password", "delete",
    "Germany", "January", "Straße und Grüße")] * 3


@pytest.fixture(scope="module")
def toks():
  """T0 = SentencePiece (byte pieces, split at spaces); new = byte-level BPE, whose merges
  cross spaces (supertokens such as 'Save and ')."""
  return SentencePieceTokenizer.train(DOCS, 300), BPETokenizer.train(DOCS, 330)


def _rows(vocab, d=5, seed=0):
  rng = np.random.default_rng(seed)
  return Embeddings(rng.normal(size=(vocab, d)), rng.normal(size=(vocab, d)))


def _init(toks, **aux):
  old_tok, new_tok = toks
  old, fresh = _rows(old_tok.vocab_size, seed=1), _rows(new_tok.vocab_size, seed=2)
  return get_initializer("tokenadapt")(old_tok, old, new_tok, fresh=fresh, aux=aux), old, fresh


def test_local_weights_sum_to_one_and_follow_similarity_and_length():
  w = ta.local_weights(np.array([0.9, 0.2, 0.2]), np.array([2, 2, 4]), 8, 0.3)
  np.testing.assert_allclose(w.sum(), 1.0)
  assert w.min() > 0 and w[0] > w[1] and w[2] > w[1]   # more similar, longer: more weight
  # The score is (cos + len/len_token) / 2, softmaxed at tau.
  s = (np.array([0.9, 0.2, 0.2]) + np.array([2, 2, 4]) / 8) / 2
  np.testing.assert_allclose(w, np.exp(s / 0.3) / np.exp(s / 0.3).sum())
  np.testing.assert_allclose(ta.local_weights(np.array([0.9, 0.1]), np.array([1, 5]), 6, 1e9),
                             [0.5, 0.5])   # tau -> infinity: the plain mean


def test_global_neighbours_top_k_threshold_and_control_tokens():
  sims = np.array([0.1, 0.95, 0.5, 0.99, 0.7, 0.3])
  ok = np.array([True, True, True, False, True, True])   # id 3: a control token
  ids, w = ta.global_neighbours(sims, ok, top_k=3, threshold=0.0, temperature=0.3)
  assert ids.tolist() == [1, 4, 2]
  np.testing.assert_allclose(w.sum(), 1.0)
  assert w[0] > w[1] > w[2]
  ids, w = ta.global_neighbours(sims, ok, top_k=3, threshold=0.6, temperature=0.3)
  assert ids.tolist() == [1, 4]
  ids, w = ta.global_neighbours(sims, ok, top_k=3, threshold=0.99, temperature=0.3)
  assert len(ids) == 0 and len(w) == 0


def test_ngram_space_is_cosine_over_spelling():
  a = ta.ngram_space([b"ation", b"ations", b"xyz", b""])
  cos = (a @ a.T).toarray()
  np.testing.assert_allclose(np.diag(cos)[:3], 1.0)
  assert cos[0, 1] > 0.5 > cos[0, 2] and cos[0, 2] == 0.0
  assert cos[3].sum() == 0.0   # an empty string has no n-grams


def test_shared_rows_kept_and_weights_sum_to_one(toks):
  old_tok, new_tok = toks
  p = ta.plan(old_tok, new_tok)
  new, old, fresh = _init(toks)
  shared = shared_tokens(old_tok, new_tok)
  assert 10 < len(shared) < new_tok.vocab_size
  for j, i in shared.items():
    np.testing.assert_array_equal(new.input[j], old.input[i])
    np.testing.assert_array_equal(new.output[j], old.output[i])
  counts = p.counts()
  assert counts["shared"] == len(shared) and counts["hybrid"] > 20
  made = p.kind != "fresh"
  np.testing.assert_allclose(np.asarray(p.mix.sum(1)).ravel()[made], 1.0)
  # Supertokens (an inner space) are initialised like any token.
  multi = [j for j, b in enumerate(vocab_bytes(new_tok)) if b" " in b.strip(b" ")]
  assert multi and all(p.kind[j] == "hybrid" for j in multi)


def test_global_weight_zero_is_the_local_part_and_the_mix_is_linear(toks):
  old_tok, new_tok = toks
  local, old, _ = _init(toks, global_weight="0")   # `--aux` gives strings
  glob, _, _ = _init(toks, global_weight=1.0)
  hybrid, _, _ = _init(toks, global_weight=0.3)
  p = ta.plan(old_tok, new_tok, ta.TokenAdaptConfig(global_weight=0.3))
  # w = 0: each non-shared token is the softmax-weighted sum of its own T0 pieces, by hand.
  a = ta.ngram_space(vocab_bytes(old_tok) + vocab_bytes(new_tok))
  a_old, a_new = a[:old_tok.vocab_size], a[old_tok.vocab_size:]
  checked = 0
  for j, b in enumerate(vocab_bytes(new_tok)):
    if p.kind[j] != "hybrid":
      continue
    pieces = decompose(old_tok, b)
    cos = (a_old[pieces] @ a_new[j].T).toarray().ravel()
    w = ta.local_weights(cos, [len(old_tok.token_bytes(i)) for i in pieces], len(b), 0.3)
    np.testing.assert_allclose(local.input[j], w @ old.input[pieces], rtol=1e-10)
    np.testing.assert_allclose(local.output[j], w @ old.output[pieces], rtol=1e-10)
    checked += 1
  assert checked > 20
  rows = p.kind == "hybrid"
  np.testing.assert_allclose(hybrid.input[rows], 0.7 * local.input[rows] + 0.3 * glob.input[
      rows], rtol=1e-10, atol=1e-12)
  assert not np.allclose(local.input[rows], glob.input[rows])


def test_infinite_temperature_local_only_is_mean_subtokens(toks):
  old_tok, new_tok = toks
  old, fresh = _rows(old_tok.vocab_size, seed=1), _rows(new_tok.vocab_size, seed=2)
  want = get_initializer("mean_subtokens")(old_tok, old, new_tok, fresh=fresh, aux={})
  got, _, _ = _init(toks, global_weight=0.0, temperature=1e9)
  np.testing.assert_allclose(got.input, want.input, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(got.output, want.output, rtol=1e-6, atol=1e-9)


def test_bad_knobs_name_the_fix(toks):
  with pytest.raises(TokenlabError, match="global_weight"):
    _init(toks, global_weight=1.5)
  with pytest.raises(TokenlabError, match="temperature"):
    _init(toks, temperature=0)


def test_count_bigram_of_documents_scores_every_token_but_the_first():
  """baselines.docs_bigram_bits_per_char: a deterministic text is learnt (near 0 bits/char
  where the uniform law pays log2 V), and the first token of a document is never scored."""
  from tokenlab.data.tokenizers import BytesTokenizer
  from tokenlab.repro.baselines import docs_bigram_bits_per_char
  tok = BytesTokenizer()
  docs = [b"ab" * n for n in range(2, 12)]
  bpc, alpha = docs_bigram_bits_per_char(tok, docs, docs[:3])
  assert bpc < 0.1 and alpha in (0.003, 0.01, 0.03, 0.1, 0.3)
  one, _ = docs_bigram_bits_per_char(tok, [b"zz"], [b"q"], alphas=(1.0,))
  assert one == 0.0   # a one-token document has nothing to score


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import tokenadapt as mod
  report = repro.run("tokenadapt", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "tokenadapt.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  rows = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  for init in mod.INITS + (mod.LOCAL,):
    assert np.isfinite(rows[(mod.arm(init, mod.EN), mod.ZS)])
  assert 0 < rows[(mod.arm("tokenadapt", mod.EN), "length vs T0")] < 2
  assert rows[(mod.counts(mod.EN), mod.BPC)] < rows[(mod.uniform(mod.EN), mod.BPC)]


def test_fresh_params_are_shared_read_only():
  """harness.fresh_params is remembered per (model, seed) (the quick run above made this
  one), so the arrays every initialiser receives are one read-only copy."""
  from tokenlab.config import load_config
  from tokenlab.transfer import harness
  from ml_collections import ConfigDict
  model = ConfigDict(load_config("experiments/tokenadapt.py:size=tiny").model.to_dict())
  model.vocab_size = 300   # the quick run's bpe:300 target
  a = harness.fresh_params(model, 0)
  assert harness.fresh_params(model, 0) is a
  table = a["embed"]["embedding"]
  assert table.shape == (model.vocab_size, model.d_model) and np.std(table) > 0
  with pytest.raises(ValueError, match="read-only"):
    table[0, 0] = 1.0
