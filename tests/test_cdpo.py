"""cDPO (method cdpo), the preference pieces (tokenlab.nn.preference, tokenlab.data.preference)
and the arithmetic-chain task (tokenlab.data.chains)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.data import chains
from tokenlab.data.preference import PairIterator, make_pair, response_row
from tokenlab.method import random_params as _random_params
from tokenlab.methods.cdpo import CDPO, CDPOConfig, detection_metrics, preference_pairs
from tokenlab.nn.preference import (contrastive_scores, dpo_loss, sequence_logps, token_logps,
                                    token_weighted_dpo_loss)

CFG = CDPOConfig(vocab_size=chains.VOCAB, d_model=16, num_layers=1, num_heads=2,
                 stage="preference")
TASK = chains.ChainTask(num_steps=3)


@pytest.fixture(scope="module")
def pairs():
  pairs = preference_pairs(TASK, 8, data_seed=0, split="train")
  rng = np.random.default_rng(1)
  for p in pairs:
    for side in ("chosen", "rejected"):
      p[f"{side}_scores"] = rng.uniform(size=p[f"{side}_targets"].shape).astype(np.float32)
  return pairs


@pytest.fixture(scope="module")
def model(pairs):
  method = CDPO(CFG)
  batch = next(PairIterator(pairs, 4, 0, shuffle=False))
  params = _random_params(method, batch)
  policy = jax.tree.map(lambda x: x + 0.05, params["policy"])   # policy != reference
  return method, batch, {"policy": policy, "reference": params["reference"]}


def test_identical_models_give_plain_probabilities():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 7)) * 2, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, (2, 5)))
  s = contrastive_scores(logits, logits, targets)
  np.testing.assert_allclose(s, jnp.exp(token_logps(logits, targets)), rtol=1e-5)
  # A different negative model: softmax(2 l_pos - l_neg)[y] computed directly.
  neg = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  cd = np.asarray(2 * logits - neg, np.float64)
  p = np.exp(cd - cd.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = np.take_along_axis(p, np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(contrastive_scores(logits, neg, targets), want, rtol=1e-5)
  # The negative model preferring the target more than the positive one lowers its score.
  bump = jnp.zeros((2, 5, 7)).at[0, 0, targets[0, 0]].set(3.0)
  assert contrastive_scores(logits, neg + bump, targets)[0, 0] < want[0, 0]


def test_unit_weights_reduce_token_weighted_dpo_to_dpo():
  rng = np.random.default_rng(0)
  lp = [jnp.asarray(-rng.uniform(0, 3, (3, 6)), jnp.float32) for _ in range(4)]
  mc = jnp.asarray(rng.integers(0, 2, (3, 6)), jnp.float32)
  mr = jnp.asarray(rng.integers(0, 2, (3, 6)), jnp.float32)
  ones = jnp.ones((3, 6))
  got, margin = token_weighted_dpo_loss(*lp, mc, mr, ones, ones, beta=0.3)
  seq = [sequence_logps(x, m) for x, m in zip(lp, (mc, mr, mc, mr))]
  want, want_margin = dpo_loss(*seq, beta=0.3)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(margin, want_margin, rtol=1e-6)
  # General weights: margin = sum wc D+ - sum wr D- on the masked tokens.
  wc, wr = (jnp.asarray(rng.uniform(size=(3, 6)), jnp.float32) for _ in range(2))
  _, m = token_weighted_dpo_loss(*lp, mc, mr, wc, wr, beta=0.3)
  pc, pr, rc, rr = (np.asarray(x, np.float64) for x in lp)
  want_m = (np.sum(wc * mc * (pc - rc), 1) - np.sum(wr * mr * (pr - rr), 1))
  np.testing.assert_allclose(m, want_m, rtol=1e-5)


def test_cdpo_loss_weights_and_dpo_equivalence(model):
  method, batch, params = model
  loss_fn = lambda m, b: m.loss(params, b, jax.random.key(0))   # eager: no compiles
  dpo = CDPO(dataclasses.replace(CFG, weighting="uniform"))
  ones = dict(batch, chosen_scores=np.ones_like(batch["chosen_scores"]),
              rejected_scores=np.zeros_like(batch["rejected_scores"]))
  np.testing.assert_allclose(loss_fn(method, ones)[0], loss_fn(dpo, batch)[0], rtol=1e-6)
  # cDPO's margin by hand: chosen weighted s_t, rejected 1 - s_t.
  lp = lambda p, side: np.asarray(token_logps(method.lm_logits(p, batch[f"{side}_inputs"]),
                                              batch[f"{side}_targets"]), np.float64)
  d = {s: lp(params["policy"], s) - lp(params["reference"], s) for s in ("chosen", "rejected")}
  margin = (np.sum(batch["chosen_scores"] * batch["chosen_loss_mask"] * d["chosen"], 1)
            - np.sum((1 - batch["rejected_scores"]) * batch["rejected_loss_mask"]
                     * d["rejected"], 1))
  want = np.mean(np.log1p(np.exp(-CFG.beta * margin)))
  loss, metrics = loss_fn(method, batch)
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  np.testing.assert_allclose(metrics["margin"].value(), margin.mean(), rtol=1e-4)
  only_neg = CDPO(dataclasses.replace(CFG, only_neg=True))
  np.testing.assert_allclose(
      loss_fn(only_neg, dict(batch, chosen_scores=np.zeros_like(batch["chosen_scores"])))[0],
      loss_fn(only_neg, batch)[0], rtol=1e-6)   # chosen scores unused


def test_reference_gets_no_gradient_and_equal_models_give_log2(model):
  method, batch, params = model
  g = jax.jit(jax.grad(lambda p: method.loss(p, batch, jax.random.key(0))[0]))(params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g["reference"]))
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["policy"])) > 0
  same = {"policy": params["reference"], "reference": params["reference"]}
  np.testing.assert_allclose(jax.jit(method.loss)(same, batch, jax.random.key(0))[0],
                             np.log(2.0), rtol=1e-6)


def test_adopt_params_copies_the_lm_into_policy_and_reference(model):
  method, batch, params = model
  lm = jax.tree.map(lambda x: x * 0 + 1.5, params["policy"])
  new = method.adopt_params(params, lm)
  for name in ("policy", "reference"):
    assert all(float(jnp.min(x)) == 1.5 for x in jax.tree.leaves(new[name]))
  resumed = method.adopt_params(params, jax.tree.map(np.asarray, params))   # a preference run
  np.testing.assert_array_equal(resumed["policy"]["embed"]["embedding"],
                                params["policy"]["embed"]["embedding"])
  from tokenlab.train.init_from import freeze_labels
  labels = freeze_labels("^reference/")(params)
  assert set(jax.tree.leaves(labels["reference"])) == {"frozen"}
  assert set(jax.tree.leaves(labels["policy"])) == {"train"}


REMARKS = chains.ChainTask(num_steps=3, remarks=True, p_rare_remark=0.3)


@pytest.mark.parametrize("TASK", [TASK, REMARKS], ids=["plain", "remarks"])
def test_chain_task_plants_one_critical_mistake(TASK):
  rng = np.random.default_rng(0)
  misconceptions = 0
  for _ in range(200):
    p = TASK.problem(rng)
    good = TASK.solve(p)
    toks, pos = TASK.trajectory(p, rng, "incorrect")
    assert len(toks) == TASK.length
    k = (pos - TASK.prompt_len - 1) // TASK.stride + 1  # the planted step
    assert TASK.result_pos(k) == pos
    written = [int(toks[TASK.result_pos(i)]) for i in range(1, TASK.num_steps + 1)]
    assert written[:k - 1] == good[:k - 1] and written[k - 1] != good[k - 1]
    r = written[k - 1]                                   # later steps follow the wrong value
    for i in range(k, TASK.num_steps):
      r = chains.apply_op(p.ops[i], r, p.operands[i])
      assert written[i] == r
    assert toks[TASK.answer_pos] == written[-1] != good[-1]
    if chains.TIMES in p.ops and k == p.ops.index(chains.TIMES) + 1:
      prev = good[k - 2] if k > 1 else p.start
      misconceptions += written[k - 1] == (prev + p.operands[k - 1]) % 10
    ok, none = TASK.trajectory(p, rng, "correct")
    assert none == -1 and ok[TASK.answer_pos] == good[-1]
    np.testing.assert_array_equal(ok[:TASK.prompt_len], toks[:TASK.prompt_len])
  assert misconceptions > 100
  batch = next(chains.ChainIterator(TASK, 64, 0, kind="mixed"))
  wrong = np.mean(batch["critical"] >= 0)
  assert 0.4 < wrong < 0.8                               # p_wrong = 0.6
  rows = np.arange(64)[batch["critical"] >= 0]
  assert (batch["loss_mask"][rows, batch["critical"][rows]] == 1).all()
  assert (batch["loss_mask"][:, :TASK.prompt_len - 1] == 0).all()
  if TASK.remarks:      # a remark after every result, rare ones at about p_rare_remark
    remarks = batch["inputs"][:, [TASK.result_pos(i) + 1 for i in range(1, 4)]]
    assert ((remarks >= chains.REMARK0) & (remarks < chains.VOCAB)).all()
    assert 0.2 < np.mean(remarks != chains.REMARK0) < 0.4
    assert (batch["inputs"][:, TASK.answer_pos - 1] == chains.ANS).all()


def test_preference_rows_and_pair_iterator(pairs):
  row = response_row([5, 6], [7, 8, 9], length=6, pad_id=0)
  np.testing.assert_array_equal(row["inputs"], [5, 6, 7, 8, 9, 0])
  np.testing.assert_array_equal(row["targets"], [6, 7, 8, 9, 0, 0])
  np.testing.assert_array_equal(row["loss_mask"], [0, 1, 1, 1, 0, 0])
  p = make_pair([1, 2], [3], [4, 4], length=4, weight=np.float32(2))
  assert set(p) >= {"chosen_inputs", "rejected_loss_mask", "weight"}
  it = PairIterator(pairs, 3, seed=0)
  seen = np.concatenate([next(it)["critical"] for _ in range(8)])   # 24 = 3 epochs of 8
  assert sorted(seen[:8].tolist()) == sorted(p["critical"] for p in pairs)
  state = it.get_state()
  b = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["chosen_inputs"], b["chosen_inputs"])
  ordered = PairIterator(pairs, 3, 0, shuffle=False)
  assert len(list(ordered)) == 2                                    # whole batches only
  first = pairs[0]
  c = first["critical"]
  n_prompt = int(first["prompt_len"])
  np.testing.assert_array_equal(first["chosen_inputs"][:n_prompt],
                                first["rejected_inputs"][:n_prompt])
  assert first["chosen_targets"][c] != first["rejected_targets"][c]
  assert first["chosen_targets"][int(first["answer_pos"]) - 1] == first["answer"]


def test_detection_metrics():
  mask = np.array([[0, 1, 1, 1], [0, 1, 1, 1]], np.float32)
  scores = np.array([[0.0, 0.9, 0.1, 0.8], [0.0, 0.2, 0.9, 0.95]])
  m = detection_metrics(scores, mask, np.array([2, 1]))
  assert m["top1"] == 1.0 and m["auroc"] == 1.0           # the masked 0.0 is ignored
  m = detection_metrics(scores, mask, np.array([3, 1]))
  assert m["top1"] == 0.5 and m["auroc"] < 1.0


def test_greedy_answer_accuracy_with_an_oracle():
  batch = next(chains.ChainIterator(TASK, 6, 0, kind="mixed"))

  class Oracle(CDPO):
    """Writes the batch's own trajectory (its targets), whatever it is fed."""
    def lm_logits(self, lm_params, tokens):
      return jax.nn.one_hot(batch["targets"], chains.VOCAB) * 10.0

  oracle = Oracle(dataclasses.replace(CFG, stage="sft"))
  acc = oracle.answer_accuracy({}, jnp.asarray(batch["inputs"]), batch).value()
  np.testing.assert_allclose(acc, np.mean(batch["critical"] < 0))   # correct rows only


def test_experiment_variants():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=tiny,stage=preference,weighting=uniform", "size=base",
              "size=small,kind=incorrect"):
    c = load_config(f"experiments/cdpo.py:{arg}")
    assert c.model.name == "cdpo" and c.model.vocab_size >= chains.VOCAB
  c = load_config("experiments/cdpo.py:stage=preference,init_from=/x")
  assert c.train.freeze == "^reference/" and c.train.init_from == "/x"


def test_repro_quick(tmp_path):
  """The quick pipeline (sft, detection, baselines, the three preference weightings), then a
  preference run through the real trainer from the quick sft: the reference stays the frozen
  sft copy, the policy trains."""
  from tokenlab import repro
  from tokenlab.repro import cdpo as cdpo_repro
  from tokenlab.train.init_from import load_params
  report = repro.run("cdpo", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "cdpo.png").exists()
  assert {r.check.name for r in report.checks} == {c.name for c in cdpo_repro.CHECKS}
  rows = {(a, m): v for a, m, v, _, _ in report.rows}
  for arm in ("dpo (tuned)", "cdpo (tuned)", "p_pos-weighted dpo (tuned)", cdpo_repro.SFT,
              cdpo_repro.MAJORITY):
    assert 0.0 <= rows[(arm, cdpo_repro.ACC)] <= 1.0, arm
  assert 0.0 < rows[(cdpo_repro.PRIOR, cdpo_repro.TOP1)] <= 1.0
  sft_dir = tmp_path / "seed0" / "sft"
  ctx = repro.Context("cdpo", str(tmp_path), 0, True)
  ctx.train(f"experiments/cdpo.py:size=tiny,stage=preference,weighting=critical,"
            f"init_from={sft_dir},pos_from={sft_dir},neg_from={sft_dir}", "pref",
            ["--config.train.steps=2", "--config.train.eval_batches=1",
             "--config.task.num_pairs=16"], eval_iter_fn=lambda batch_size, seed: iter(()))
  sft, pref = load_params(str(sft_dir)), load_params(str(tmp_path / "pref"))
  emb = lambda p: p["embed"]["embedding"]
  np.testing.assert_array_equal(emb(pref["reference"]), emb(sft))   # frozen copy of sft
  assert not np.array_equal(emb(pref["policy"]), emb(sft))          # the policy trained
