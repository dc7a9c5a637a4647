"""Insertion LM (method insertion_lm), its corruptions (tokenlab.nn.corruption), decoders
(tokenlab.nn.generate) and the star-graph task (tokenlab.data.star_graph)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.data.star_graph import (EDGE, MASK, NODE0, PAD, SEP, StarGraphIterator, StarGraphTask,
                                      is_valid_path)
from tokenlab.method import random_params as _params
from tokenlab.methods.insertion_lm import InsertionLM, InsertionLMConfig, ilm_loss
from tokenlab.nn.corruption import (drop_tokens, insert_token, insertion_targets, mask_tokens,
                                    random_subset)
from tokenlab.nn.generate import sample_insertions, sample_unmasking

TASK = StarGraphTask(degree=3, path_len=5, num_nodes=16)
CFG = InsertionLMConfig(vocab_size=TASK.vocab_size, d_model=16, num_layers=1, num_heads=2,
                        answer_len=TASK.path_len, neighbour_embed=True)


def _batch(b=4, seed=0):
  return next(StarGraphIterator(TASK, b, seed))




def test_star_graph_rows_are_valid_and_streams_are_deterministic():
  batch = _batch(8)
  assert batch["inputs"].shape == (8, TASK.seq_len) == (8, 3 * 12 + 3 + 5)
  for row in batch["inputs"]:
    assert is_valid_path(row, TASK)
    assert row[TASK.prompt_len - 1] == SEP and (row[2:3 * 12:3] == EDGE).all()
    assert len(set(row[TASK.prompt_len:])) == TASK.path_len          # a simple path
    nodes = row[:3 * 12].reshape(12, 3)[:, :2]
    assert len(set(nodes.reshape(-1))) == 13 and (nodes >= NODE0).all()
  bad = batch["inputs"][0].copy()
  bad[TASK.prompt_len + 1], bad[TASK.prompt_len + 2] = bad[TASK.prompt_len + 2], bad[
      TASK.prompt_len + 1]
  assert not is_valid_path(bad, TASK)
  np.testing.assert_array_equal(batch["answer_mask"][0, TASK.prompt_len:], 1.0)
  assert batch["answer_mask"][0, :TASK.prompt_len].sum() == 0
  it = StarGraphIterator(TASK, 2, 0)
  next(it)
  state = it.get_state()
  b2 = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["inputs"], b2["inputs"])
  held = next(StarGraphIterator(TASK, 2, 0, split="validation"))
  assert not np.array_equal(held["inputs"], _batch(2)["inputs"])


def test_targets_sum_to_one_and_count_dropped_tokens_per_gap():
  tokens = jnp.array([[3, 7, 8, 9, 10, 11]])
  drop = jnp.array([[False, False, True, True, False, True]])
  kept, slot = drop_tokens(tokens, drop, PAD)
  np.testing.assert_array_equal(kept, [[3, 7, 10, 0, 0, 0]])
  counts = insertion_targets(tokens, drop, slot, 16)
  # 8 and 9 go back after the kept 7 (slot 1), 11 after the kept 10 (slot 2).
  want = np.zeros((6, 16))
  want[1, 8] = want[1, 9] = want[2, 11] = 1
  np.testing.assert_array_equal(counts[0], want)

  batch = _batch(16)
  method = InsertionLM(CFG)
  kept, counts, valid = jax.jit(method.ilm_corrupt)(batch, jax.random.key(1))
  n = np.asarray(counts.sum((1, 2)))
  full = np.asarray(method.with_cls(jnp.asarray(batch["inputs"])))
  assert (n <= TASK.path_len).all() and (n > 0).any() and (n == 0).any()
  for b in range(16):
    if n[b]:
      np.testing.assert_allclose((counts[b] / n[b]).sum(), 1.0, rtol=1e-6)
      # mass only on slots the model may use: at or after the separator, inside the sequence
      assert (np.asarray(counts[b]).sum(-1)[~np.asarray(valid[b])] == 0).all()
    np.testing.assert_array_equal(kept[b, :1 + TASK.prompt_len], full[b, :1 + TASK.prompt_len])
    assert (np.asarray(kept[b]) != PAD).sum() == 1 + TASK.seq_len - n[b]


def test_nothing_dropped_means_stop_label_one_and_no_insertion_loss():
  logits = jax.random.normal(jax.random.key(0), (3, 5, 7))
  counts = jnp.zeros((3, 5, 7)).at[1, 2, 4].set(2.0).at[1, 3, 5].set(1.0)
  valid = jnp.ones((3, 5), bool)
  stop = jnp.array([2.0, -1.0, 0.0])
  ce, bce, label = jax.jit(ilm_loss)(logits, stop, counts, valid)
  np.testing.assert_array_equal(label, [1.0, 0.0, 1.0])
  np.testing.assert_array_equal(ce[jnp.array([0, 2])], 0.0)
  logp = jax.nn.log_softmax(logits[1].reshape(-1))   # one softmax over slots x vocab
  np.testing.assert_allclose(ce[1], -(2 / 3 * logp[2 * 7 + 4] + 1 / 3 * logp[3 * 7 + 5]),
                             rtol=1e-5)
  np.testing.assert_allclose(bce, [np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log(2)],
                             rtol=1e-5)
  # invalid slots take no probability mass
  masked = jnp.ones((3, 5), bool).at[1, 0].set(False)
  ce2, _, _ = jax.jit(ilm_loss)(logits.at[1, 0].set(50.0), stop, counts, masked)
  logp = jax.nn.log_softmax(logits[1, 1:].reshape(-1))
  np.testing.assert_allclose(ce2[1], -(2 / 3 * logp[7 + 4] + 1 / 3 * logp[2 * 7 + 5]),
                             rtol=1e-5)


def test_slot_indexing_round_trips_through_insert_token():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(np.concatenate([[[3]] * 4, rng.integers(5, 20, (4, 9))], 1))
  for trial in range(5):
    drop = random_subset(jax.random.key(trial), jnp.arange(10)[None].repeat(4, 0) > 0,
                         jnp.array([1, 2, 4, 9]))
    np.testing.assert_array_equal(drop.sum(-1), [1, 2, 4, 9])
    kept, slot = drop_tokens(tokens, drop)
    # Put the dropped tokens back right to left: a slot's index is unchanged by insertions
    # into later slots, so each goes back at exactly the slot drop_tokens reported.
    for b in range(4):
      seq = kept[b:b + 1]
      for j in np.nonzero(np.asarray(drop[b]))[0][::-1]:
        seq = insert_token(seq, slot[b, j:j + 1], tokens[b, j:j + 1])
      np.testing.assert_array_equal(seq[0], tokens[b])


def _oracle_step_fn(truth: np.ndarray, vocab: int):
  """An insertion 'model' whose logits are log of the training target for the current
  (sub)sequence of `truth` and whose stop logit says 'complete'."""
  def oracle(tokens):
    logits = np.full(tokens.shape + (vocab,), -30.0, np.float32)
    stop = np.zeros(tokens.shape[0], np.float32)
    for b, row in enumerate(np.asarray(tokens)):
      row = row[row != PAD]
      i, slot = 0, -1
      for t in truth[b]:           # greedy alignment of the subsequence to the truth
        if i < len(row) and row[i] == t:
          slot, i = i, i + 1
        else:
          logits[b, slot, t] = 0.0 if logits[b, slot, t] < -1 else logits[b, slot, t]
      stop[b] = 30.0 if len(row) == len(truth[b]) else -30.0
    return logits, stop
  return lambda t: jax.pure_callback(
      oracle, (jax.ShapeDtypeStruct(t.shape + (vocab,), jnp.float32),
               jax.ShapeDtypeStruct(t.shape[:1], jnp.float32)), t)


def test_insertion_sampler_rebuilds_the_sequence_when_following_the_targets():
  batch = _batch(3, seed=2)
  method = InsertionLM(CFG)
  truth = np.asarray(method.with_cls(jnp.asarray(batch["inputs"])))
  p = 1 + TASK.prompt_len
  buf = np.zeros((3, truth.shape[1] + 1), np.int32)
  buf[:, :p] = truth[:, :p]
  out, length, stopped = sample_insertions(
      _oracle_step_fn(truth, TASK.vocab_size), jnp.asarray(buf), jnp.full((3,), p),
      jnp.full((3,), p - 1), jax.random.key(0), max_insertions=TASK.path_len + 2)
  np.testing.assert_array_equal(out[:, :-1], truth)
  np.testing.assert_array_equal(length, truth.shape[1])
  assert bool(stopped.all())
  # Sampling (temperature 1) from the same targets also rebuilds it: every insertion with
  # mass is a correct one in some order.
  out, _, _ = sample_insertions(
      _oracle_step_fn(truth, TASK.vocab_size), jnp.asarray(buf), jnp.full((3,), p),
      jnp.full((3,), p - 1), jax.random.key(1), max_insertions=TASK.path_len + 2,
      temperature=1.0)
  np.testing.assert_array_equal(out[:, :-1], truth)


def test_unmasking_fills_the_most_confident_position_first():
  truth = jnp.array([[5, 6, 7, 8]])
  conf = jnp.array([1.0, 4.0, 2.0, 3.0])     # position 1, then 3, then 2
  logits_fn = lambda t: jax.nn.one_hot(truth, 10) * conf[None, :, None] * 3
  start = jnp.array([[5, 2, 2, 2]])
  one = sample_unmasking(logits_fn, start, 2, jax.random.key(0), steps=1)
  np.testing.assert_array_equal(one, [[5, 6, 2, 2]])
  two = sample_unmasking(logits_fn, start, 2, jax.random.key(0), steps=2)
  np.testing.assert_array_equal(two, [[5, 6, 2, 8]])
  np.testing.assert_array_equal(
      sample_unmasking(logits_fn, start, 2, jax.random.key(0), steps=5), truth)


def test_masking_touches_only_the_answer_and_every_row():
  x = jnp.asarray(_batch(32)["inputs"])
  eligible = jnp.asarray(_batch(32)["answer_mask"]) > 0
  corrupted, masked = mask_tokens(jax.random.key(0), x, eligible, 2)
  assert bool(jnp.all(masked.sum(-1) >= 1)) and not bool(jnp.any(masked & ~eligible))
  np.testing.assert_array_equal(jnp.where(masked, 2, x), corrupted)


@pytest.fixture(scope="module")
def models():
  batch = _batch(4)
  out = {}
  for obj in ("ilm", "ar", "mdm"):
    method = InsertionLM(dataclasses.replace(CFG, objective=obj))
    out[obj] = (method, _params(method, batch))
  return batch, out


def test_bidirectional_model_sees_the_future_and_ignores_padding(models):
  batch, out = models
  method, params = out["mdm"]
  x = jnp.asarray(batch["inputs"])
  padded = jnp.pad(x, ((0, 0), (0, 3)))
  base, later, pad = jax.jit(lambda p: (method.apply(p, x), method.apply(p, x.at[:, -1].set(
      NODE0)), method.apply(p, padded)))(params)
  assert float(jnp.abs(base[:, 0] - later[:, 0]).max()) > 1e-4     # not causal
  np.testing.assert_allclose(pad[:, :x.shape[1]], base, atol=1e-5)


def test_neighbour_embeddings_keep_the_left_to_right_model_causal(models):
  """The repro's models embed each position's visible neighbours: the previous token for
  every model, the next token only for bidirectional ones (else AR would see its target)."""
  batch, out = models
  assert {"prev_embed", "next_embed"} <= set(out["mdm"][1]) and "next_embed" in out["ilm"][1]
  method, params = out["ar"]
  assert "prev_embed" in params and "next_embed" not in params
  x = jnp.asarray(batch["inputs"])
  t = TASK.prompt_len + 1
  changed = x.at[:, t].set(jnp.where(x[:, t] == NODE0, NODE0 + 1, NODE0))
  base, new = jax.jit(lambda p: (method.apply(p, x), method.apply(p, changed)))(params)
  np.testing.assert_allclose(new[:, :t], base[:, :t], atol=1e-6)   # nothing leaks backwards
  assert float(jnp.abs(new[:, t] - base[:, t]).max()) > 1e-4


def test_lookup_accuracy_counts_only_the_answer_after_the_branch_node():
  batch = _batch(4)
  x = jnp.asarray(batch["inputs"])
  p = TASK.prompt_len
  method = InsertionLM(dataclasses.replace(CFG, objective="ar"))
  oracle = jax.nn.one_hot(x[:, 1:], TASK.vocab_size)
  wrong_start_and_branch = oracle.at[:, p - 1:p + 1].set(0.0).at[:, p - 1:p + 1, PAD].set(1.0)
  for logits, want in ((oracle, 1.0), (wrong_start_and_branch, 1.0), (-oracle, 0.0)):
    method.apply = lambda params, tokens, logits=logits: logits
    acc = method.lookup_accuracy(None, batch)
    assert float(acc.count) == 4 * (TASK.path_len - 2) and float(acc.total / acc.count) == want


def test_losses_and_decoding_of_every_objective(models):
  batch, out = models
  from tokenlab.methods.transformer_lm import lm_loss
  method, params = out["ar"]
  x = jnp.asarray(batch["inputs"])
  view = {"targets": x[:, 1:], "loss_mask": batch["answer_mask"][:, 1:]}
  loss, want = jax.jit(lambda p: (method.loss(p, batch, jax.random.key(0))[0],
                                  lm_loss(method.apply(p, x[:, :-1]), view)[0]))(params)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  for obj in ("ilm", "ar", "mdm"):   # (eval_metrics on top runs in test_repro_quick)
    method, params = out[obj]
    decoded, ok = jax.jit(method.generate)(params, batch, jax.random.key(0))
    np.testing.assert_array_equal(decoded[:, :TASK.prompt_len], x[:, :TASK.prompt_len])
    answer = np.asarray(decoded[:, TASK.prompt_len:])
    if obj == "mdm":   # answer_len steps unmask every answer position
      assert (answer != MASK).all()
    assert decoded.shape == x.shape and ok.shape == (4,)


def test_experiment_variants():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=tiny,objective=ar", "size=small,objective=mdm", "size=base"):
    c = load_config(f"experiments/insertion_lm.py:{arg}")
    assert c.model.name == "insertion_lm" and c.model.vocab_size == TASK.vocab_size + 4
  c = load_config("experiments/insertion_lm.py:size=tiny,path=4,degree=2")
  assert c.model.answer_len == 4


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import insertion_lm as mod
  report = repro.run("insertion_lm", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "insertion_lm.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  measured = {(r["arm"], r["metric"]) for r in data["rows"]}
  assert {(mod.ILM, mod.EXACT), (mod.RANDOM, mod.EXACT), (mod.UNTRAINED, mod.LOOKUP)} <= measured


def test_random_path_baseline_sits_at_one_over_degree():
  """The Clever-Hans solver follows real edges, so it is right exactly when it picks the
  goal's arm: 1/degree of the graphs, and its branch accuracy equals its exact match."""
  from tokenlab.repro.insertion_lm import random_path
  rng = np.random.default_rng(0)
  rows = np.stack([TASK.sample(rng) for _ in range(600)])
  out = random_path(rows, TASK, np.random.default_rng(1))
  assert abs(out["eval/path_exact"] - 1 / TASK.degree) < 0.06
  assert out["eval/branch_acc"] == pytest.approx(out["eval/path_exact"])
  two = StarGraphTask(degree=2, path_len=4, num_nodes=12)
  rows = np.stack([two.sample(rng) for _ in range(600)])
  assert abs(random_path(rows, two, np.random.default_rng(1))["eval/path_exact"] - 0.5) < 0.07
