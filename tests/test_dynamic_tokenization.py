"""Dynamic tokenization (tokenlab/methods/dynamic_tokenization.py): batch-level BPE within
words on numpy/bytes (no merge crosses a word, text unchanged, merge order), zero merges is
the identity (same ids, same logits, one tiny compile), the new tokens' ids and rows, the
packing's scored text, and the quick reproduction."""

import jax
import numpy as np
import pytest

from tokenlab import repro
from tokenlab.data.tokenizers import SentencePieceTokenizer
from tokenlab.method import random_params
from tokenlab.methods import dynamic_tokenization as dt
from tokenlab.methods.transformer_lm import lm_loss
from tokenlab.transfer import get_initializer
from tokenlab.transfer.initializers import Embeddings, decompositions, shared_tokens

DOCS = [s.encode() for s in (
    "Delete selected items", "Add another item", "the items were deleted", "Select all items",
    "Save and add another", "Save and continue editing", "Change password", "delete",
    "Germany", "January", "Straße und Grüße", "items  deleted now")] * 3


@pytest.fixture(scope="module")
def tok():
  """T0: SentencePiece (split at spaces, byte pieces)."""
  return SentencePieceTokenizer.train(DOCS, 300)


def test_no_merge_crosses_a_word_and_text_is_unchanged(tok):
  """For every merge count: each document decodes to its own bytes, no token's span holds a
  word start after its first byte, lengths only fall with m, and with merges exhausted
  every word is exactly one token."""
  lengths = []
  for m in (0, 1, 5, 20, 10_000):
    db = dt.encode_batch(tok, DOCS, m)
    assert len(db.merges) <= m
    for k, doc in enumerate(DOCS):
      assert dt.decode(db, tok, k) == doc
      pos = 0
      for i in db.ids[k]:
        t = db.token_bytes(tok, int(i))
        inner = doc[pos + 1:pos + len(t)]
        assert not any(c in dt.WHITESPACE for c in inner), (m, t)
        pos += len(t)
    lengths.append(db.num_tokens())
  assert lengths == sorted(lengths, reverse=True) and lengths[-1] < lengths[0]
  # Merges exhausted: no mergeable pair is left, and a text with single spaces has one
  # token per word.
  for k, doc in enumerate(DOCS):
    toks = [db.token_bytes(tok, int(i)) for i in db.ids[k]]
    assert not any(dt.can_merge(a, b) for a, b in zip(toks, toks[1:]))
    if b"  " not in doc:
      assert len(toks) == len(doc.split())


def test_batch_bpe_merges_the_most_frequent_pair_first_and_never_across_words():
  seqs = [[b"a", b"b", b"c"], [b"a", b"b"], [b"c", b"d"], [b"x", b"y"]]
  out, merges = dt.dynamic_bpe(seqs, 1)
  assert merges == [(b"a", b"b")] and out[0] == [b"ab", b"c"] and out[1] == [b"ab"]
  # Equal counts: the pair seen first in the batch.
  assert dt.dynamic_bpe([[b"x", b"y"], [b"c", b"d"]], 1)[1] == [(b"x", b"y")]
  # Across a word (the second token opens one) nothing merges, however frequent.
  out, merges = dt.dynamic_bpe([[b"a", b" b", b"c"]] * 5, 10)
  assert merges == [(b" b", b"c")] and out[0] == [b"a", b" bc"]
  assert not dt.can_merge(b"a ", b"b") and dt.can_merge(b" ", b"b")
  assert not dt.can_merge(b"", b"b")


def test_new_ids_and_rows(tok):
  """A merged string T0 has takes T0's id; the others get V0 + k, once each; their
  mean_subtokens rows are the mean of their T0 spelling's rows (via the harness's
  initialiser, as `new_rows` gives them)."""
  db = dt.encode_batch(tok, DOCS, 30)
  v0 = tok.vocab_size
  assert db.new_tokens and len(set(db.new_tokens)) == len(db.new_tokens)
  t0 = {tok.token_bytes(i) for i in range(v0)}
  assert not t0 & set(db.new_tokens)
  used = {int(i) for ids in db.ids for i in ids}
  assert {v0 + k for k in range(len(db.new_tokens))} <= used
  for ids in db.ids:
    for i in ids:
      if i < v0:
        assert tok.token_bytes(int(i)) in t0
  rng = np.random.default_rng(0)
  old = Embeddings(rng.normal(size=(v0, 8)), rng.normal(size=(v0, 8)))
  k = len(db.new_tokens)
  fresh = Embeddings(np.zeros((k, 8)), np.zeros((k, 8)))
  rows = dt.new_rows("mean_subtokens", tok, old, db.new_tokens, fresh=fresh, aux={})
  spell = decompositions(tok, dt.NewTokens(db.new_tokens))
  for j, p in enumerate(spell):
    np.testing.assert_allclose(rows.input[j], old.input[p].mean(0), rtol=1e-6)
    np.testing.assert_allclose(rows.output[j], old.output[p].mean(0), rtol=1e-6)
  assert get_initializer("random")(tok, old, dt.NewTokens(db.new_tokens), fresh=fresh,
                                   aux={}) is fresh


def test_initialiser_keeps_t0_rows_and_takes_the_others_from_the_hypernetwork(tok):
  """`--init dynamic_tokenization` on a fixed target: tokens T0 has keep T0's rows exactly,
  the others get the rows of the initialiser it wraps (here `random`, standing in for the
  hypernetwork: the fresh rows)."""
  target = dt.NewTokens([b" items", b"Delete", b"xyz-new", tok.token_bytes(tok.vocab_size - 1)])
  rng = np.random.default_rng(3)
  v0 = tok.vocab_size
  old = Embeddings(rng.normal(size=(v0, 4)), rng.normal(size=(v0, 4)))
  fresh = Embeddings(rng.normal(size=(4, 4)), rng.normal(size=(4, 4)))
  made = get_initializer("dynamic_tokenization")(tok, old, target, fresh=fresh,
                                                  aux={"new_rows": "random"})
  shared = shared_tokens(tok, target)
  assert 3 in shared and 2 not in shared
  for j in range(4):
    want = (old.input[shared[j]], old.output[shared[j]]) if j in shared else (
        fresh.input[j], fresh.output[j])
    np.testing.assert_array_equal(made.input[j], want[0])
    np.testing.assert_array_equal(made.output[j], want[1])


def _scored_chars(batches, db, tok) -> int:
  """Characters (UTF-8 lead bytes) of the scored targets."""
  return sum(int(w) * sum(c & 0xC0 != 0x80 for c in db.token_bytes(tok, int(t)))
             for b in batches for t, w in zip(b["targets"].ravel(), b["loss_mask"].ravel()))


def test_packing_scores_the_same_characters_for_every_m(tok):
  """'vocabulary': every document's tokens come back from the packed rows (one segment
  each, positions from 0). 'prefill': one example per word after the first, the dynamic
  tokens of the words before it then T0's tokens of the word, which alone are scored, and
  no new token is ever a prediction. Both score the same characters for every m."""
  scored = []
  for m in (0, 8, 10_000):
    db = dt.encode_batch(tok, DOCS, m)
    rows = Embeddings(np.zeros((len(db.new_tokens), 8)), np.zeros((len(db.new_tokens), 8)))
    pack = lambda scoring: dt.pack(db, tok, rows, batch_size=4, seq_len=32, new_slots=128,
                                   scoring=scoring)
    batches = pack("vocabulary")
    got = []
    for b in batches:
      assert b["new_input"].shape == (4, 32, 8) and b["new_mask"].sum() == len(db.new_tokens)
      for r in range(4):
        for s in sorted(set(b["segment_ids"][r][b["segment_ids"][r] > 0])):
          sel = b["segment_ids"][r] == s
          got.append(np.concatenate([b["inputs"][r][sel], b["targets"][r][sel][-1:]]))
          np.testing.assert_array_equal(b["positions"][r][sel], np.arange(sel.sum()))
    multi = [ids for ids in db.ids if len(ids) > 1]
    assert len(got) == len(multi) and all(np.array_equal(a, c) for a, c in zip(got, multi))
    prefill = pack("prefill")
    for b in prefill:
      assert b["new_mask"].sum() == 0
      assert (b["targets"][b["loss_mask"] > 0] < tok.vocab_size).all()
    # The example of "the items were deleted"'s last word: the dynamic tokens of
    # "the items were", then T0's " deleted", scored.
    doc = DOCS.index(b"the items were deleted")
    ex = [e for e in dt.examples(db, tok, "prefill")
          if b"".join(db.token_bytes(tok, int(i)) for i in e[0]) == DOCS[doc]][0]
    word = tok.encode(b" deleted")
    np.testing.assert_array_equal(ex[0][-len(word):], word)
    assert ex[1].sum() == len(word) and ex[1][-len(word):].all()
    scored += [_scored_chars(batches, db, tok), _scored_chars(prefill, db, tok)]
  assert len(set(scored)) == 1 and scored[0] > 0


def test_zero_merges_is_the_identity(tok):
  """m = 0: T0's ids exactly; the model over the dynamic vocabulary gives T0's logits on
  T0's ids (the new slots at -1e9) and T0's loss."""
  db = dt.encode_batch(tok, DOCS, 0)
  assert not db.new_tokens and not db.merges
  for ids, doc in zip(db.ids, DOCS):
    np.testing.assert_array_equal(ids, tok.encode(doc))
  cfg = dt.DynamicTokenizationConfig(vocab_size=tok.vocab_size, d_model=16, num_layers=1,
                                     num_heads=2, new_slots=8)
  method = dt.DynamicTokenization(cfg)
  params = random_params(method, {"inputs": np.zeros((1, 4), np.int32)}, seed=1)
  rows = Embeddings(np.zeros((0, 16)), np.zeros((0, 16)))
  batch = dt.pack(db, tok, rows, batch_size=4, seq_len=32, new_slots=8,
                  scoring="vocabulary")[0]
  logits = jax.jit(method.logits)
  dyn = logits(params, batch)
  ref = jax.jit(method.lm.logits)(params, batch)
  # Equal to float32 rounding (the wider output matmul sums in another order: ~1e-7).
  np.testing.assert_allclose(np.asarray(dyn[..., :tok.vocab_size]), np.asarray(ref),
                             rtol=1e-5, atol=1e-6)
  assert (np.asarray(dyn[..., tok.vocab_size:]) < -1e8).all()
  # The loss as lm_loss takes it from these logits (the same compiled programs).
  loss = lm_loss(dyn, batch)[0]
  assert float(loss) == pytest.approx(float(lm_loss(ref, batch)[0]), rel=1e-6)
  # Prefill scoring at m = 0 is T0's own: each word after the same T0 context, so its
  # summed NLL equals one pass over whole documents (same shapes: no new compile).

  def total(scoring):
    return sum(float(lm_loss(logits(params, b), b)[1]["loss"].total)
               for b in dt.pack(db, tok, rows, batch_size=4, seq_len=32, new_slots=8,
                                scoring=scoring))
  assert total("prefill") == pytest.approx(total("vocabulary"), rel=1e-5)


def test_repro_quick(tmp_path):
  result = repro.run("dynamic_tokenization", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "dynamic_tokenization.png").exists()
  rows = {(a, m): v for a, m, v, _, _ in result.rows}
  m = [int(a.split("=")[1][:-1]) for a, k in rows if a.startswith("zett [m=")][0]
  assert rows[(dt_merges(m), "length vs T0")] < 1.0
  # The untrained hypernetwork (heads at zero) is the mean of the pieces: equal bits/char.
  assert rows[(f"zett [m={m}]", "bits/char")] == pytest.approx(
      rows[(f"mean_subtokens [m={m}]", "bits/char")], abs=1e-3)


def dt_merges(m: int) -> str:
  return f"merges [m={m}]"
