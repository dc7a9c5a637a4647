"""ZeTT (tokenlab/methods/zett.py): the hypernetwork's invariants on tiny arrays, the sampled
tokenizers and their batches (pure numpy), the loss on one tiny batch, and the quick
reproduction (which trains the hypernetwork two steps through the trainer; the check that
T0's tokens keep their rows reads that trained hypernetwork)."""

import os

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


@pytest.fixture(scope="module")
def hyper():
  """A HyperNetwork (width 8, d 6) with random parameters, heads included (non-zero)."""
  net = zett.HyperNetwork(hidden=8, num_layers=1, num_heads=2)
  rows = jnp.zeros((1, 4, 6))
  shapes = jax.eval_shape(net.init, jax.random.key(0), rows, rows, jnp.ones((1, 4), bool))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32),
                        jax.tree.map(lambda b: getattr(b, "value", b), shapes["params"],
                                     is_leaf=lambda b: hasattr(b, "value")))
  return net, params


def test_single_piece_token_is_a_function_of_that_piece_only(hyper):
  net, params = hyper
  rng = np.random.default_rng(1)
  rin, rout = rng.normal(size=(4, 4, 6)), rng.normal(size=(4, 4, 6))
  mask = np.zeros((4, 4), bool)
  mask[:, 0] = True
  mask[3, :3] = True                    # token 3 has three pieces
  rin[1, 0], rout[1, 0] = rin[0, 0], rout[0, 0]   # token 1: token 0's piece, other pads
  rin[2, 0] = rin[0, 0] + 1.0                     # token 2: another piece
  f = jax.jit(lambda a, b, m: net.apply({"params": params}, a, b, m))
  ins, outs = map(np.asarray, f(rin, rout, mask))
  # Same single piece, different padding contents (and neighbours): identical rows.
  np.testing.assert_allclose(ins[0], ins[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
  assert np.abs(ins[0] - ins[2]).max() > 1e-3          # another piece: another row
  # Token 0 alone (other tokens and pads changed) gives the same row: no token sees another.
  rin2, rout2 = rng.normal(size=(4, 4, 6)), rng.normal(size=(4, 4, 6))
  rin2[0, 0], rout2[0, 0] = rin[0, 0], rout[0, 0]
  ins2, _ = map(np.asarray, f(rin2, rout2, np.ones((4, 4), bool) & (np.arange(4) < 1)))
  np.testing.assert_allclose(ins2[0], ins[0], rtol=1e-5, atol=1e-6)
  # A multi-piece token does depend on its second piece.
  rin3 = rin.copy()
  rin3[3, 1] += 1.0
  assert np.abs(np.asarray(f(rin3, rout, mask)[0])[3] - ins[3]).max() > 1e-3


def test_zero_heads_give_the_mean_of_the_pieces(hyper):
  net, params = hyper
  zero = jax.tree_util.tree_map_with_path(
      lambda p, a: np.zeros_like(a) if "head_" in jax.tree_util.keystr(p) else a, params)
  rng = np.random.default_rng(2)
  rin, rout = rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 4, 6))
  mask = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
  ins, outs = jax.jit(lambda a, b, m: net.apply({"params": zero}, a, b, m))(rin, rout, mask)
  for j in range(3):
    np.testing.assert_allclose(ins[j], rin[j][mask[j]].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[j], rout[j][mask[j]].mean(0), rtol=1e-5, atol=1e-6)


def test_untrained_initialiser_is_mean_subtokens(toks):
  """The registered initialiser with an untrained hypernetwork (heads at zero) gives every
  token the mean of its T0 pieces' rows: `mean_subtokens` exactly where that baseline
  averages, and T0's own row for a shared token T0 spells as itself."""
  old_tok, new_tok = toks
  method = zett.ZeTT(zett.ZeTTConfig(vocab_size=old_tok.vocab_size, d_model=8, num_layers=1,
                                     num_heads=2, hn_hidden=8, hn_heads=2, vocab_slots=8))
  params = random_params(method, {"inputs": np.zeros((1, 4), np.int32)}, seed=3)
  params["hyper"] = jax.tree_util.tree_map_with_path(
      lambda p, a: np.zeros_like(a) if "head_" in jax.tree_util.keystr(p) else a,
      params["hyper"])
  zett.remember_hypernet("/nonexistent/zett-test", method, params)
  rng = np.random.default_rng(4)
  old = Embeddings(rng.normal(size=(old_tok.vocab_size, 8)),
                   rng.normal(size=(old_tok.vocab_size, 8)))
  fresh = Embeddings(rng.normal(size=(new_tok.vocab_size, 8)),
                     rng.normal(size=(new_tok.vocab_size, 8)))
  made = get_initializer("zett")(old_tok, old, new_tok, fresh=fresh,
                                 aux={"hypernet": "/nonexistent/zett-test"})
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


def test_loss_ignores_padded_slots_and_aux_is_zero_at_the_original_rows(toks):
  old_tok, _ = toks
  cfg = zett.ZeTTConfig(vocab_size=old_tok.vocab_size, d_model=8, num_layers=1, num_heads=2,
                        hn_hidden=8, hn_heads=2, max_pieces=2, vocab_slots=8)
  method = zett.ZeTT(cfg)
  params = random_params(method, {"inputs": np.zeros((1, 4), np.int32)}, seed=5)
  params["hyper"] = jax.tree_util.tree_map_with_path(
      lambda p, a: np.zeros_like(a) if "head_" in jax.tree_util.keystr(p) else a,
      params["hyper"])
  # 6 real tokens (T0 ids 10..15, each spelt as itself), 2 padded slots; 2 rows x 4 slots.
  pieces = np.zeros((8, 2), np.int32)
  pieces[:6, 0] = np.arange(10, 16)
  pmask = np.zeros((8, 2), bool)
  pmask[:, 0] = True
  slot = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
  old_id = np.array([10, 11, 12, 13, 14, 15, -1, -1], np.int32)
  rng = np.random.default_rng(6)
  batch = {"inputs": rng.integers(0, 6, (2, 5)).astype(np.int32),
           "targets": rng.integers(0, 6, (2, 5)).astype(np.int32),
           "loss_mask": np.ones((2, 5), np.float32),
           "pieces": pieces.reshape(2, 4, 2), "piece_mask": pmask.reshape(2, 4, 2),
           "slot_mask": slot.reshape(2, 4), "old_id": old_id.reshape(2, 4)}
  loss = jax.jit(lambda p, b: method.loss(p, b, jax.random.key(0)))
  l1, m1 = loss(params, batch)
  assert float(m1["aux_loss"].value()) == pytest.approx(0.0, abs=1e-10)
  moved = dict(batch, pieces=pieces.copy())
  moved["pieces"][6:, 0] = [3, 4]            # other spellings in the padded slots only
  moved["pieces"] = moved["pieces"].reshape(2, 4, 2)
  l2, _ = loss(params, moved)
  assert float(l1) == pytest.approx(float(l2), rel=1e-6)
  # Spelling token 0 (T0 id 10) with another piece moves it off its row: aux > 0.
  off = pieces.copy()
  off[0, 0] = 20
  _, m3 = loss(params, dict(batch, pieces=off.reshape(2, 4, 2)))
  assert float(m3["aux_loss"].value()) > 0.01


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


def test_t0_tokens_keep_their_rows_after_training(toks):
  """The project's train step (make_train_step, the optimizer with FREEZE) trains a tiny
  hypernetwork 25 steps on an untrained tiny source over sampled tokenizers: the LM loss
  falls, the source stays bit-identical, and the new tokenizer's tokens T0 also has get rows
  of mean cosine > COS_THRESHOLD with their originals (input and output)."""
  from ml_collections import ConfigDict
  from tokenlab.train.optimizer import make_optimizer
  from tokenlab.train.state import TrainState
  from tokenlab.train.step import make_train_step
  old_tok, new_tok = toks
  cfg = zett.ZeTTConfig(vocab_size=old_tok.vocab_size, d_model=16, num_layers=1, num_heads=2,
                        hn_hidden=16, hn_heads=2, max_pieces=4, vocab_slots=512)
  method = zett.ZeTT(cfg)
  sampler = zett.SubstringSampler.build(old_tok, DOCS, max_len=6, min_count=2, pool_size=200,
                                        max_pieces=4)
  it = zett.SampledTokenizerIterator(sampler, DOCS, cfg, batch_size=4, seq_len=16, seed=0,
                                     min_vocab=300, temperature=1.0)
  params = random_params(method, {"inputs": np.zeros((1, 4), np.int32)}, seed=7, scale=0.3)
  params["hyper"] = jax.tree_util.tree_map_with_path(
      lambda p, a: np.zeros_like(a) if "head_" in jax.tree_util.keystr(p) else a,
      params["hyper"])
  opt = ConfigDict(dict(name="adamw", lr=1e-2, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0,
                        schedule="constant", warmup_steps=0, min_lr_ratio=0.0))
  tx = make_optimizer(opt, 25, 1.0, zett.FREEZE)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  step = jax.jit(make_train_step(method, tx, compute_dtype=jnp.float32))
  losses = []
  for _ in range(25):
    state, metrics = step(state, next(it), jax.random.key(0))
    losses.append(float(metrics["loss"].value()))
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
  jax.tree.map(np.testing.assert_array_equal, state.params["lm"], params["lm"])
  heads = [np.asarray(v["kernel"]) for k, v in state.params["hyper"].items()
           if k.startswith("head_")]
  assert all(np.abs(h).max() > 1e-3 for h in heads)          # the correction was learnt
  zett.remember_hypernet("/nonexistent/zett-trained", method, jax.device_get(state.params))
  old = harness_embeddings(params["lm"])
  rng = np.random.default_rng(8)
  fresh = Embeddings(rng.normal(size=(new_tok.vocab_size, 16)),
                     rng.normal(size=(new_tok.vocab_size, 16)))
  made = get_initializer("zett")(old_tok, old, new_tok, fresh=fresh,
                                 aux={"hypernet": "/nonexistent/zett-trained"})
  cin, cout = zett.shared_cosines(old_tok, old, new_tok, made)
  assert cin > COS_THRESHOLD and cout > COS_THRESHOLD, (cin, cout)


def harness_embeddings(lm_params) -> Embeddings:
  from tokenlab.transfer.harness import get_embeddings
  return get_embeddings(lm_params)
