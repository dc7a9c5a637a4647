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
from tokenlab.transfer.initializers import Embeddings, decompositions

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


def test_packing_scores_the_same_characters_for_every_m(tok):
  """Every document's tokens come back from the packed rows (inputs + last target, one
  segment each); the first word is context only, so the scored characters are the same
  for every merge count."""
  scored = []
  for m in (0, 8, 10_000):
    db = dt.encode_batch(tok, DOCS, m)
    rows = Embeddings(np.zeros((len(db.new_tokens), 8)), np.zeros((len(db.new_tokens), 8)))
    batches = dt.pack(db, tok, rows, batch_size=4, seq_len=32, new_slots=128)
    got, chars = [], 0
    for b in batches:
      assert b["new_input"].shape == (4, 32, 8) and b["new_mask"].sum() <= len(db.new_tokens)
      for r in range(4):
        for s in sorted(set(b["segment_ids"][r][b["segment_ids"][r] > 0])):
          sel = b["segment_ids"][r] == s
          got.append(np.concatenate([b["inputs"][r][sel], b["targets"][r][sel][-1:]]))
          np.testing.assert_array_equal(b["positions"][r][sel], np.arange(sel.sum()))
        for t, w in zip(b["targets"][r], b["loss_mask"][r]):
          chars += int(w) * dt._num_chars(db.token_bytes(tok, int(t)))  # pylint: disable=protected-access
    multi = [ids for ids in db.ids if len(ids) > 1]
    assert len(got) == len(multi) and all(np.array_equal(a, c) for a, c in zip(got, multi))
    scored.append(chars)
  assert scored[0] == scored[1] == scored[2] > 0


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
  batch = dt.pack(db, tok, rows, batch_size=4, seq_len=32, new_slots=8)[0]
  dyn = jax.jit(method.logits)(params, batch)
  ref = jax.jit(method.lm.logits)(params, batch)
  # Equal to float32 rounding (the wider output matmul sums in another order: ~1e-7).
  np.testing.assert_allclose(np.asarray(dyn[..., :tok.vocab_size]), np.asarray(ref),
                             rtol=1e-5, atol=1e-6)
  assert (np.asarray(dyn[..., tok.vocab_size:]) < -1e8).all()
  # The loss as lm_loss takes it from these logits (the same compiled programs).
  loss = lm_loss(dyn, batch)[0]
  assert float(loss) == pytest.approx(float(lm_loss(ref, batch)[0]), rel=1e-6)


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
