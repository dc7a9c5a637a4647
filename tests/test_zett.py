"""ZeTT (tokenlab/methods/zett.py): the hypernetwork's invariants on tiny arrays, the sampled
tokenizers and their batches (numpy), one tiny hypernetwork trained 25 steps by the
project's train step (one compile, shared by the loss and training checks), and the quick
reproduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab import repro
from tokenlab.data.tokenizers import BPETokenizer, SentencePieceTokenizer
from tokenlab.errors import TokenlabError
from tokenlab.method import random_params
from tokenlab.methods import zett
from tokenlab.transfer import get_initializer
from tokenlab.transfer.harness import get_embeddings
from tokenlab.transfer.initializers import Embeddings, decompositions, shared_tokens

DOCS = [s.encode() for s in (
    "Delete selected items", "Add another item", "the items were deleted", "Select all items",
    "Save and add another", "Save and continue editing", "Change password", "delete",
    "Germany", "January", "Straße und Grüße")] * 3
COS_THRESHOLD = 0.9   # declared: shared tokens' predicted rows vs their originals


@pytest.fixture(scope="module")
def toks():
  """T0 = SentencePiece (byte pieces, split at spaces); new = byte-level BPE."""
  return SentencePieceTokenizer.train(DOCS, 300), BPETokenizer.train(DOCS, 330)


CFG = dict(d_model=16, num_layers=1, num_heads=2, hn_hidden=16, hn_heads=2, max_pieces=4,
           vocab_slots=512)


def _zero_heads(hyper_params):
  return jax.tree_util.tree_map_with_path(
      lambda p, a: np.zeros_like(a) if "head_" in jax.tree_util.keystr(p) else a, hyper_params)


@pytest.fixture(scope="module")
def tiny(toks):
  """One tiny ZeTT (d 16) on an untrained source, its substring sampler over DOCS, and the
  project's train step (make_train_step; the optimizer with FREEZE) jitted once; `trained`:
  the state after 25 steps over sampled tokenizers, with the per-step losses."""
  from ml_collections import ConfigDict
  from tokenlab.train.optimizer import make_optimizer
  from tokenlab.train.state import TrainState
  from tokenlab.train.step import make_train_step
  old_tok, _ = toks
  method = zett.ZeTT(zett.ZeTTConfig(vocab_size=old_tok.vocab_size, **CFG))
  sampler = zett.SubstringSampler.build(old_tok, DOCS, max_len=6, min_count=2, pool_size=200,
                                        max_pieces=4)
  it = zett.SampledTokenizerIterator(sampler, DOCS, method.config, batch_size=4, seq_len=16,
                                     seed=0, min_vocab=300, temperature=1.0)
  params = random_params(method, {"inputs": np.zeros((1, 4), np.int32)}, seed=7, scale=0.3)
  params["hyper"] = _zero_heads(params["hyper"])   # as ZeTT.init has them
  opt = ConfigDict(dict(name="adamw", lr=1e-2, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0,
                        schedule="constant", warmup_steps=0, min_lr_ratio=0.0))
  tx = make_optimizer(opt, 25, 1.0, zett.FREEZE)
  start = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  step = jax.jit(make_train_step(method, tx, compute_dtype=jnp.float32))
  state, losses = start, []
  for _ in range(25):
    state, metrics = step(state, next(it), jax.random.key(0))
    losses.append(float(metrics["loss"].value()))
  return dict(method=method, params=params, sampler=sampler, it=it, step=step, start=start,
              trained=jax.device_get(state.params), losses=losses)


def _predict(tiny, hyper_params, e0, u0, decomps):
  return zett.predict_rows(tiny["method"], hyper_params, Embeddings(e0, u0), decomps)


def test_single_piece_token_is_a_function_of_that_piece_only(tiny):
  """Through the initialiser's compiled predictor, with the trained (non-zero) heads: a
  one-piece token's rows do not move when the pad row (id 0), its neighbours' spellings or
  other rows change; another piece gives other rows; a multi-piece token follows each of
  its pieces."""
  hp = tiny["trained"]["hyper"]
  rng = np.random.default_rng(1)
  v0, d = tiny["method"].config.vocab_size, tiny["method"].config.d_model
  e0, u0 = rng.normal(size=(v0, d)), rng.normal(size=(v0, d))
  spell = [np.array([7]), np.array([8]), np.array([7, 9, 11]), np.array([12, 13])]
  a = _predict(tiny, hp, e0, u0, spell)
  e1, u1 = e0.copy(), u0.copy()
  e1[0], u1[0] = rng.normal(size=d), rng.normal(size=d)     # the pad row
  e1[9], e1[12] = rng.normal(size=d), rng.normal(size=d)    # pieces of the other tokens
  b = _predict(tiny, hp, e1, u1, [np.array([7]), np.array([5, 6]), None])
  np.testing.assert_allclose(b.input[0], a.input[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b.output[0], a.output[0], rtol=1e-5, atol=1e-6)
  assert np.abs(a.input[0] - a.input[1]).max() > 1e-3          # another piece
  c = _predict(tiny, hp, e1, u1, spell)
  assert np.abs(c.input[2] - a.input[2]).max() > 1e-3           # its piece 9 changed
  assert np.abs(c.input[3] - a.input[3]).max() > 1e-3           # its piece 12 changed


def test_zero_heads_give_the_mean_of_the_pieces(tiny):
  rng = np.random.default_rng(2)
  v0, d = tiny["method"].config.vocab_size, tiny["method"].config.d_model
  e0, u0 = rng.normal(size=(v0, d)), rng.normal(size=(v0, d))
  spell = [np.array([3]), np.array([4, 5]), np.array([6, 7, 8, 9]), np.array([10, 10])]
  made = _predict(tiny, tiny["params"]["hyper"], e0, u0, spell)
  for j, p in enumerate(spell):
    np.testing.assert_allclose(made.input[j], e0[p].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(made.output[j], u0[p].mean(0), rtol=1e-5, atol=1e-5)


def test_untrained_initialiser_is_mean_subtokens(toks, tiny):
  """The registered initialiser with an untrained hypernetwork (heads at zero) gives every
  token the mean of its T0 pieces' rows: `mean_subtokens` exactly where that baseline
  averages, and T0's own row for a shared token T0 spells as itself."""
  old_tok, new_tok = toks
  method = tiny["method"]
  zett.remember_hypernet("/nonexistent/zett-untrained", method, tiny["params"])
  rng = np.random.default_rng(4)
  d = method.config.d_model
  old = Embeddings(rng.normal(size=(old_tok.vocab_size, d)),
                   rng.normal(size=(old_tok.vocab_size, d)))
  fresh = Embeddings(rng.normal(size=(new_tok.vocab_size, d)),
                     rng.normal(size=(new_tok.vocab_size, d)))
  made = get_initializer("zett")(old_tok, old, new_tok, fresh=fresh,
                                 aux={"hypernet": "/nonexistent/zett-untrained"})
  base = get_initializer("mean_subtokens")(old_tok, old, new_tok, fresh=fresh, aux={})
  shared, pieces = shared_tokens(old_tok, new_tok), decompositions(old_tok, new_tok)
  checked = 0
  for j, p in enumerate(pieces):
    if p is None:
      np.testing.assert_array_equal(made.input[j], fresh.input[j])
    elif len(p) > method.config.max_pieces:
      continue                        # truncated spelling: the first max_pieces only
    elif j not in shared or (len(p) == 1 and p[0] == shared[j]):
      np.testing.assert_allclose(made.input[j], base.input[j], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(made.output[j], base.output[j], rtol=1e-5, atol=1e-6)
      checked += 1
  assert checked > new_tok.vocab_size // 2
  with pytest.raises(TokenlabError, match="--aux hypernet"):
    get_initializer("zett")(old_tok, old, new_tok, fresh=fresh, aux={})


def test_sampled_tokenizers_and_their_batches(toks):
  old_tok, _ = toks
  sampler = zett.SubstringSampler.build(old_tok, DOCS, max_len=6, min_count=2, pool_size=200,
                                        max_pieces=4)
  assert len(sampler.subs) == 200 and all(2 <= len(s) <= 6 for s in sampler.subs)
  # Every pool entry's T0 spelling spells it; old ids name tokens of the same bytes.
  for s, p, m, o in zip(sampler.subs[:50], sampler.pieces, sampler.piece_mask,
                        sampler.old_id):
    if m.all():
      continue                        # longer than max_pieces: truncated
    assert b"".join(old_tok.token_bytes(int(i)) for i in p[m]) == s
    assert o < 0 or old_tok.token_bytes(int(o)) == s
  cfg = zett.ZeTTConfig(vocab_size=old_tok.vocab_size, max_pieces=4, vocab_slots=512)
  it = zett.SampledTokenizerIterator(sampler, DOCS, cfg, batch_size=4, seq_len=16, seed=0,
                                     min_vocab=300, temperature=1.0)
  b1, b2 = next(it), next(it)
  assert b1["pieces"].shape == (4, 128, 4) and b1["slot_mask"].shape == (4, 128)
  n1 = int(b1["slot_mask"].sum())
  assert 300 <= n1 <= 456 and (b1["targets"] < n1).all() and (b1["inputs"] < n1).all()
  assert b1["slot_mask"].reshape(-1)[:n1].all() and not b1["slot_mask"].reshape(-1)[n1:].any()
  assert not np.array_equal(b1["pieces"], b2["pieces"])   # a new tokenizer every batch
  # The sampled tokenizer's encoding spells the text back exactly.
  tok, _ = sampler.sample(np.random.default_rng(0), 300, 512)
  for doc in DOCS[:11]:
    assert b"".join(tok.token_bytes(i) for i in tok.encode(doc)) == doc
  # Byte slots: T0 spells byte b with the piece of its bytes.
  old_id = b1["old_id"].reshape(-1)
  assert old_tok.token_bytes(int(old_id[ord("a")])) == b"a"


def test_loss_ignores_padded_slots_and_aux_is_zero_at_the_original_rows(tiny):
  """Through the fixture's compiled step, from the untrained hypernetwork (its metrics are
  computed before the update): the auxiliary loss is 0 when every T0 token of the vocabulary
  is spelt as itself, > 0 when one is spelt otherwise; padded slots never change the loss."""
  batch = dict(next(zett.SampledTokenizerIterator(
      tiny["sampler"], DOCS, tiny["method"].config, batch_size=4, seq_len=16, seed=3,
      min_vocab=300, temperature=1.0)))
  old_id, slot = batch["old_id"].reshape(-1), batch["slot_mask"].reshape(-1)
  pieces = batch["pieces"].reshape(512, 4).copy()
  pmask = batch["piece_mask"].reshape(512, 4).copy()
  has = (old_id >= 0) & (slot > 0)
  pieces[has, 0], pmask[has, 1:] = old_id[has], False
  run = lambda b: tiny["step"](tiny["start"], b, jax.random.key(0))[1]
  exact = dict(batch, pieces=pieces.reshape(4, 128, 4), piece_mask=pmask.reshape(4, 128, 4))
  m1 = run(exact)
  assert float(m1["aux_loss"].value()) == pytest.approx(0.0, abs=1e-10)
  n = int(slot.sum())
  moved = pieces.copy()
  moved[n:, 0] = 5                           # other spellings in the padded slots only
  m2 = run(dict(exact, pieces=moved.reshape(4, 128, 4)))
  assert float(m1["step_loss"].value()) == pytest.approx(float(m2["step_loss"].value()),
                                                          rel=1e-6)
  off = pieces.copy()
  j = int(np.flatnonzero(has & (old_id != 5))[0])
  off[j, 0] = 5                              # a T0 token spelt with another piece
  m3 = run(dict(exact, pieces=off.reshape(4, 128, 4)))
  assert float(m3["aux_loss"].value()) > 1e-4


def test_t0_tokens_keep_their_rows_after_training(toks, tiny):
  """After 25 steps of the project's train step over sampled tokenizers (lr 1e-2): the LM
  loss fell, the source stayed bit-identical, the heads learnt a correction, and the new
  tokenizer's tokens T0 also has get rows of mean cosine > COS_THRESHOLD with their originals
  (input and output)."""
  old_tok, new_tok = toks
  losses, trained, params = tiny["losses"], tiny["trained"], tiny["params"]
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
  jax.tree.map(np.testing.assert_array_equal, trained["lm"], params["lm"])
  heads = [np.asarray(v["kernel"]) for k, v in trained["hyper"].items()
           if k.startswith("head_")]
  assert all(np.abs(h).max() > 1e-3 for h in heads)
  zett.remember_hypernet("/nonexistent/zett-trained", tiny["method"], trained)
  old = get_embeddings(params["lm"])
  rng = np.random.default_rng(8)
  d = tiny["method"].config.d_model
  fresh = Embeddings(rng.normal(size=(new_tok.vocab_size, d)),
                     rng.normal(size=(new_tok.vocab_size, d)))
  made = get_initializer("zett")(old_tok, old, new_tok, fresh=fresh,
                                 aux={"hypernet": "/nonexistent/zett-trained"})
  cin, cout = zett.shared_cosines(old_tok, old, new_tok, made)
  assert cin > COS_THRESHOLD and cout > COS_THRESHOLD, (cin, cout)
  # ... and the rows did change: the hypernetwork is not the plain mean any more.
  base = get_initializer("mean_subtokens")(old_tok, old, new_tok, fresh=fresh, aux={})
  assert np.abs(made.input - base.input).max() > 1e-3


def test_repro_quick(tmp_path):
  result = repro.run("zett", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "zett.png").exists()
  rows = {(a, m): v for a, m, v, _, _ in result.rows}
  for init in ("random", "mean_subtokens", "zett"):
    assert np.isfinite(rows[(f"{init} [en]", "zero-shot bits/char")])
  # The untrained hypernetwork (heads at zero) is the mean of the pieces: its bits/char
  # equal mean_subtokens' to float precision (shared T0 tokens are spelt as themselves).
  assert rows[("zett [en]", "zero-shot bits/char")] == pytest.approx(
      rows[("mean_subtokens [en]", "zero-shot bits/char")], abs=0.02)
