"""Self-generated tokens (method self_generated_tokens), its token-mixing ops
(tokenlab.nn.scheduled_sampling) and the addition task (tokenlab.data.arithmetic)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.data import arithmetic
from tokenlab.data.arithmetic import AdditionTask, carries
from tokenlab.method import random_params as _params
from tokenlab.methods.self_generated_tokens import (AdditionIterator, SelfGeneratedTokens,
                                                    SelfGeneratedTokensConfig)
from tokenlab.methods.transformer_lm import lm_loss
from tokenlab.nn import scheduled_sampling as ss

TASK = AdditionTask(num_digits=3)
CFG = SelfGeneratedTokensConfig(vocab_size=arithmetic.VOCAB_SIZE, d_model=16, num_layers=1,
                                num_heads=2, mode="bash", mix_max=1.0, schedule="constant",
                                gen_temperature=0.0)


def _batch(n=4, seed=0, progress=1.0):
  b = TASK.lm_batch(TASK.problems(np.random.default_rng(seed), n))
  b["progress"] = np.full((n,), progress, np.float32)
  return b


@pytest.fixture(scope="module")
def params():
  batch = _batch()
  return _params(SelfGeneratedTokens(CFG), batch)


def _greedy_decode(method, params, tokens, prompt_len):
  """Reference free-running greedy decode, one python step per token."""
  tokens = np.array(tokens)
  for t in range(prompt_len, tokens.shape[1]):
    logits = method._apply(params, jnp.asarray(tokens))
    tokens[:, t] = np.argmax(np.asarray(logits[:, t - 1]), -1)
  return tokens


def test_addition_task_format_and_roundtrip():
  p, a = TASK.encode(np.array([17, 999]), np.array([5, 1]))
  assert TASK.render(np.concatenate([p, a], 1)[0]) == "^710+500=2200$"   # reversed digits
  assert [TASK.decode_answer(x) for x in a] == [22, 1000]
  plain = AdditionTask(3, reverse=False)
  p, a = plain.encode(np.array([17]), np.array([995]))
  assert plain.render(np.concatenate([p, a], 1)[0]) == "^017+995=1012$"
  assert plain.decode_answer(a[0]) == 1012
  assert TASK.decode_answer(np.array([1, 2, 3, 4, 5])) is None           # no <eos>
  rng = np.random.default_rng(0)
  x, y = AdditionTask(6).sample_operands(rng, 500)
  probs = AdditionTask(6).problems(np.random.default_rng(1), 500)
  assert probs.shape == (500, AdditionTask(6).seq_len) and probs.max() < arithmetic.VOCAB_SIZE
  for row, (u, v) in zip(AdditionTask(6).encode(x, y)[1], zip(x, y)):
    assert AdditionTask(6).decode_answer(row) == u + v
  hx, hy = AdditionTask(6).sample_operands(rng, 500, full_width=True, carry_bias=0.7)
  assert (hx >= 10 ** 5).all() and (hy >= 10 ** 5).all()
  assert carries(hx, hy).mean() > carries(x, y).mean() + 1.5
  np.testing.assert_array_equal(carries(np.array([95, 10]), np.array([5, 10])), [2, 0])
  b = TASK.lm_batch(TASK.problems(rng, 2))
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  assert b["loss_mask"][0].tolist() == [0.0] * (TASK.prompt_len - 1) + [1.0] * TASK.answer_len
  assert (b["targets"][b["loss_mask"] > 0].reshape(2, -1)[:, -1] == arithmetic.EOS).all()


def test_mixing_schedules():
  for sched in ss.SCHEDULES:
    p = [float(ss.mixing_probability(x, 0.4, sched)) for x in (0.0, 0.5, 1.0)]
    assert abs(p[2] - 0.4) < 1e-6, sched
    assert p[0] <= p[1] <= p[2]
  assert float(ss.mixing_probability(0.0, 0.4, "linear")) == 0.0
  assert abs(float(ss.mixing_probability(0.0, 0.4, "sigmoid"))) < 1e-6
  assert float(ss.mixing_probability(0.0, 0.4, "constant")) == pytest.approx(0.4)


def test_predicted_inputs_and_region():
  logits = jax.nn.one_hot(jnp.array([[3, 1, 2, 0]]), 5) * 10.0
  inputs = jnp.array([[4, 4, 4, 4]])
  np.testing.assert_array_equal(ss.predicted_inputs(logits, inputs, jax.random.key(0),
                                                    temperature=0.0), [[4, 3, 1, 2]])
  region = ss.answer_region(jnp.array([[0, 0, 1, 1], [0, 1, 1, 1]]))
  np.testing.assert_array_equal(region, [[0, 0, 0, 1], [0, 0, 1, 1]])
  np.testing.assert_array_equal(ss.first_region_index(region), [3, 2])
  two = jnp.concatenate([inputs, inputs])
  mixed, replaced = ss.mix_tokens(two, two + 1, region, 1.0, jax.random.key(0))
  np.testing.assert_array_equal(mixed, [[4, 4, 4, 5], [4, 4, 5, 5]])
  np.testing.assert_array_equal(replaced, region)
  prefix = ss.own_prefix_mask(jnp.ones((200, 6), bool), jnp.arange(200) % 2 == 0,
                              jax.random.key(1))
  ks = np.asarray(prefix).sum(1)
  assert (ks[1::2] == 0).all() and set(ks[::2]) == set(range(1, 7))
  assert (np.diff(np.asarray(prefix).astype(int), axis=1) <= 0).all()   # a prefix


@pytest.mark.parametrize("mode", ["bash", "rac"])
def test_mixing_prob_zero_is_teacher_forcing_exactly(params, mode):
  rng = jax.random.key(3)
  # Linear schedule: p = progress, so one compiled loss serves p = 0 and p = 1.
  m = SelfGeneratedTokens(dataclasses.replace(CFG, mode=mode, schedule="linear"))
  loss_fn = jax.jit(m.loss)
  at_start = _batch(progress=0.0)
  want, _ = lm_loss(m._apply(params, at_start["inputs"]), at_start)   # teacher forcing
  loss, metrics = loss_fn(params, at_start, rng)
  # Jitted loss vs the un-jitted reference: two programs XLA may fuse differently (issue 14).
  assert float(loss) == pytest.approx(float(want), rel=1e-6, abs=1e-6)
  assert float(metrics["mix_prob"].value()) == 0.0
  assert float(metrics["own_token_frac"].value()) == 0.0   # no input replaced
  # ... and a positive probability changes the inputs (the check above could not pass
  # trivially): the own tokens of a random model are mostly wrong.
  loss, metrics = loss_fn(params, _batch(progress=1.0), rng)
  assert float(metrics["own_token_frac"].value()) > 0.3
  assert float(loss) != float(want)


def test_bash_mixes_own_predictions_into_answers_only(params):
  batch = _batch()
  m = SelfGeneratedTokens(CFG)   # p = 1: every answer input is the model's own token
  mixed, metrics = m.training_inputs(params, batch, jax.random.key(0))
  mixed = np.asarray(mixed)
  P = TASK.prompt_len
  np.testing.assert_array_equal(mixed[:, :P], batch["inputs"][:, :P])     # prompt kept
  own = ss.predicted_inputs(m._apply(params, batch["inputs"]), batch["inputs"],
                            jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(mixed[:, P:], np.asarray(own)[:, P:])
  assert float(metrics["own_token_frac"].value()) == 1.0
  # The loss is the ground truth's NLL given the mixed inputs (labels are not changed).
  loss, _ = m.loss(params, batch, jax.random.key(0))
  want, _ = lm_loss(m._apply(params, jnp.asarray(mixed)), batch)
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_rac_continues_from_own_free_running_prefix(params):
  batch = _batch(n=16)
  m = SelfGeneratedTokens(dataclasses.replace(CFG, mode="rac"))
  tokens = np.concatenate([batch["inputs"][:, :1], batch["targets"]], 1)
  P = TASK.prompt_len
  want_free = _greedy_decode(m, params, tokens, P)
  free = m.free_run(params, batch, jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(free, want_free)
  derived = SelfGeneratedTokens(dataclasses.replace(CFG, mode="rac", prompt_len=0))
  np.testing.assert_array_equal(derived.free_run(params, batch, jax.random.key(0),
                                                 temperature=0.0), want_free)
  mixed, metrics = jax.jit(m.training_inputs)(params, batch, jax.random.key(1))
  mixed = np.asarray(mixed)
  ks = set()
  for row, gen, gt in zip(mixed, want_free[:, :-1], batch["inputs"]):
    own = row[P:] == gen[P:]
    k = int(np.argmin(np.concatenate([own, [False]])))   # own prefix length
    assert 1 <= k <= TASK.answer_len - 1
    np.testing.assert_array_equal(row[:P], gt[:P])
    np.testing.assert_array_equal(row[P + k:], gt[P + k:])   # the reference after it
    ks.add(k)
  assert len(ks) > 1
  assert float(metrics["own_token_error"].value()) > 0.3   # a random model's prefix is wrong


def test_eval_free_running_exact_match(params):
  batch = _batch(n=6)
  batch["hard"] = np.array([0, 0, 0, 1, 1, 1], np.float32)
  m = SelfGeneratedTokens(CFG)
  P = TASK.prompt_len
  tokens = np.concatenate([batch["inputs"][:, :1], batch["targets"]], 1)
  free = _greedy_decode(m, params, tokens, P)
  # Make rows 0 and 4 solved: their targets are the model's own greedy answer.
  for r in (0, 4):
    batch["targets"][r, P - 1:] = free[r, P:]
    batch["inputs"][r, P:] = free[r, P:-1]
  metrics = jax.jit(m.eval_metrics)(params, batch, jax.random.key(0))
  np.testing.assert_allclose(metrics["exact_match"].value(), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics["exact_match_hard"].value(), 1 / 3, rtol=1e-6)
  # Greedy: free-running exact <=> every teacher-forced argmax right (same rows).
  np.testing.assert_allclose(metrics["tf_exact_match"].value(), 1 / 3, rtol=1e-6)
  assert 0.0 <= float(metrics["recovery_acc"].value()) < 1.0


def test_iterator_checkpointing_and_held_out():
  it = AdditionIterator(TASK, 4, 0, num_train=10, total_steps=4)
  b0 = next(it)
  state = it.get_state()
  b1 = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["inputs"], b1["inputs"])
  assert b0["progress"][0] == 0.0 and b1["progress"][0] == 0.25 and b0["hard"].sum() == 0
  ev = next(AdditionIterator(TASK, 8, 0, split="validation", num_batches=1))
  np.testing.assert_array_equal(ev["hard"], [0, 0, 0, 0, 1, 1, 1, 1])
  assert set(ev) == set(b0)   # the trainer shards eval batches like train batches


def test_experiment_variants():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=tiny,mode=bash", "size=small,mode=rac", "size=base"):
    c = load_config(f"experiments/self_generated_tokens.py:{arg}")
    assert c.model.name == "self_generated_tokens"
    assert c.data.seq_len == AdditionTask(c.task.num_digits).seq_len - 1
  with pytest.raises(Exception):
    SelfGeneratedTokens(dataclasses.replace(CFG, mode="dagger"))


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import self_generated_tokens as mod
  report = repro.run("self_generated_tokens", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "self_generated_tokens.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  measured = {(r["arm"], r["metric"]) for r in data["rows"]}
  for b in mod.BASELINES:   # every baseline arm is measured on both sets
    assert (b, mod.HELD_OUT) in measured and (b, mod.HARD) in measured
  assert ("RAC", mod.HARD) in measured


def test_trivial_baselines_score_what_they_should():
  """The no-carry adder is exact on problems without a carry and wrong with one; the
  answer prior and the n-gram are scored on the same rows."""
  from tokenlab.config import load_config
  from tokenlab.repro import self_generated_tokens as mod
  config = load_config("experiments/self_generated_tokens.py:size=tiny")
  task = AdditionTask(config.task.num_digits)
  a, b = np.array([12, 15, 999, 0]), np.array([31, 7, 1, 0])   # carries: no, yes, yes, no
  batch = task.lm_batch(np.concatenate(task.encode(a, b), 1))
  batch["hard"] = np.array([0, 0, 1, 1], np.float32)
  out = mod.trivial_baselines(config, [batch])
  assert out[mod.NOCARRY]["eval/exact_match"] == pytest.approx(0.5)   # 12+31 right, 15+7 not
  assert out[mod.NOCARRY]["eval/exact_match_hard"] == pytest.approx(0.5)  # 0+0 right
  assert set(out) == {mod.PRIOR, mod.NGRAM, mod.NOCARRY}
  assert all(0.0 <= v <= 1.0 for r in out.values() for v in r.values())
