"""The reproduction protocol: checks as data, verdicts computed from them, seeds, repro.json."""

import json
import os
import sys
import types

import numpy as np
import pytest

from tokenlab import repro
from tokenlab.errors import TokenlabError
from tokenlab.repro import protocol as P

PRE = P.prerequisite("beats_uniform", "the model beats the uniform law",
                     ("model", "nll"), "<", ("uniform", "nll"))
CLAIM_A = P.claim("a", "the method beats the baseline model", ("method", "nll"), "<",
                  ("model", "nll"))
CLAIM_B = P.claim("b", "the method is accurate", ("method", "acc"), ">", 0.5)


def _seed(model=1.0, uniform=2.0, method=0.5, acc=0.9):
  return {("model", "nll"): model, ("uniform", "nll"): uniform, ("method", "nll"): method,
          ("method", "acc"): acc}


def _judge(*seeds, checks=(PRE, CLAIM_A, CLAIM_B)):
  results = [P.evaluate(c, list(seeds)) for c in checks]
  return results, P.verdict(results)[0]


def test_all_pass_is_held():
  _, v = _judge(_seed())
  assert v == P.HELD


def test_failed_prerequisite_is_not_assessable_whatever_the_claims():
  results, v = _judge(_seed(model=3.0, method=0.1))   # model worse than uniform
  assert not results[0].passed and results[1].passed and results[2].passed
  assert v == P.NOT_ASSESSABLE
  assert "beats_uniform" in P.verdict(results)[1]


def test_held_impossible_with_a_failing_claim():
  results, v = _judge(_seed(acc=0.4))
  assert [r.passed for r in results] == [True, True, False]
  assert v == P.PARTLY
  _, v = _judge(_seed(method=2.0, acc=0.1))
  assert v == P.NOT_HELD


def test_missing_or_nonfinite_metric_fails_the_check():
  seed = _seed()
  del seed[("method", "acc")]
  r = P.evaluate(CLAIM_B, [seed])
  assert not r.passed and "not measured" in r.detail
  r = P.evaluate(CLAIM_A, [_seed(method=float("nan"))])
  assert not r.passed and "not finite" in r.detail
  # A missing prerequisite metric makes the run not assessable.
  seed = _seed()
  del seed[("uniform", "nll")]
  assert _judge(seed)[1] == P.NOT_ASSESSABLE


def test_margin_by_and_non_strict_ops():
  c = P.claim("c", "x below y by 0.2", ("x", "m"), "<", ("y", "m"), by=0.2)
  assert c.comparison() == "x · m < y · m - 0.2"
  assert P.claim("w", "x within 0.1 of y", ("x", "m"), "<", ("y", "m"), by=-0.1
                 ).comparison() == "x · m < y · m + 0.1"
  assert P.claim("g", "x above 0.5 by 0.1", ("x", "m"), ">", 0.5, by=0.1
                 ).comparison() == "x · m > 0.5 + 0.1"
  assert P.aggregate([[("a", "m", 0.1 + 0.2)], [("a", "m", 0.1 + 0.2)]])[0][3] == 0.0
  assert not P.evaluate(c, [{("x", "m"): 1.0, ("y", "m"): 1.1}]).passed
  assert P.evaluate(c, [{("x", "m"): 1.0, ("y", "m"): 1.3}]).passed
  c = P.claim("d", "x at least 1", ("x", "m"), ">=", 1.0)
  assert P.evaluate(c, [{("x", "m"): 1.0}]).passed
  assert not P.evaluate(c, [{("x", "m"): 0.99}]).passed


def test_margin_within_spread_needs_three_seeds():
  # Two seeds: mean margin 0.05, per-seed margins 0.25 and -0.15 (spread 0.28): refused.
  two = [_seed(method=0.75), _seed(method=1.15)]
  r = P.evaluate(CLAIM_A, two)
  assert r.margin == pytest.approx(0.05) and not r.passed and ">= 3 seeds" in r.detail
  # Three seeds with the same mean: judged on the mean, spread stated.
  three = two + [_seed(method=0.95)]
  r = P.evaluate(CLAIM_A, three)
  assert r.passed and "3 seeds" in r.detail and r.spread > r.margin
  # Two seeds with a margin clear of the spread pass.
  r = P.evaluate(CLAIM_A, [_seed(method=0.5), _seed(method=0.55)])
  assert r.passed


def test_validate_refuses_dishonest_declarations():
  with pytest.raises(ValueError, match="no claim check"):
    P.validate([PRE], ["uniform"])
  with pytest.raises(ValueError, match="no trivial baseline"):
    P.validate([PRE, CLAIM_A], [])
  with pytest.raises(ValueError, match="no prerequisite compares"):
    P.validate([PRE, CLAIM_A], ["untrained"])
  with pytest.raises(ValueError, match="no check uses"):
    P.validate([PRE, CLAIM_A], ["uniform", "untrained"])
  with pytest.raises(ValueError, match="unique"):
    P.validate([PRE, CLAIM_A, CLAIM_A], ["uniform"])
  with pytest.raises(ValueError, match="kind"):
    P.Check("x", "claimish", "s", ("a", "m"), "<", 1.0)
  with pytest.raises(ValueError, match="op"):
    P.claim("x", "s", ("a", "m"), "!=", 1.0)
  P.validate([PRE, CLAIM_A, CLAIM_B], ["uniform"])


def test_aggregate_mean_std_per_seed():
  rows = P.aggregate([[("a", "m", 1.0), ("a", "note", "x")], [("a", "m", 3.0),
                                                              ("a", "note", "y")]])
  assert rows[0][:3] == ("a", "m", 2.0) and rows[0][3] == pytest.approx(2 ** 0.5)
  assert rows[0][4] == [1.0, 3.0]
  assert rows[1][2] == "x" and rows[1][3] is None


def _fake_module(name, values_by_seed, checks=(PRE, CLAIM_A, CLAIM_B)):
  mod = types.ModuleType(f"tokenlab.repro.{name}")
  mod.CLAIM = "a toy claim"
  mod.BASELINES = ("uniform",)
  mod.CHECKS = checks
  mod.SEEDS = len(values_by_seed)

  def run_seed(ctx):
    vals = values_by_seed[ctx.seed]
    os.makedirs(ctx.path("model"), exist_ok=True)   # a trained arm's metrics, as the trainer
    with open(ctx.path("model", "metrics.jsonl"), "w") as f:   # writes them
      f.write('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/stage1/x": 1.5}\n')
    return repro.Trial([(a, m, v) for (a, m), v in vals.items()])
  mod.run_seed = run_seed
  return mod


def test_runner_writes_protocol_fields(tmp_path, monkeypatch):
  mod = _fake_module("toy", [_seed(), _seed(method=0.6), _seed(method=0.7, acc=0.3)])
  monkeypatch.setitem(sys.modules, "tokenlab.repro.toy", mod)
  monkeypatch.setattr(repro, "names", lambda: ["toy"])
  result = repro.run("toy", workdir=str(tmp_path))
  assert result.seeds == [0, 1, 2] and result.verdict == P.HELD   # acc mean 0.7 > 0.5
  data = json.loads((tmp_path / "repro.json").read_text())
  assert data["verdict"] in P.VERDICTS and data["seeds"] == [0, 1, 2]
  assert data["baselines"] == ["uniform"]
  assert {c["name"] for c in data["checks"]} == {"beats_uniform", "a", "b"}
  assert all({"name", "kind", "statement", "passed", "detail"} <= set(c)
             for c in data["checks"])
  md = (tmp_path / "repro.md").read_text()
  assert "Verdict: **held**" in md and "beats_uniform" in md
  assert (tmp_path / "seed2").is_dir()
  # Every arm is plotted like `tokenlab plot` would (nested metric names included).
  assert (tmp_path / "seed2" / "model" / "plots" / "summary.png").exists()
  assert (tmp_path / "seed2" / "model" / "plots" / "stage1.png").exists()
  # --quick: one seed, checks shown, nothing claimed.
  quick = repro.run("toy", workdir=str(tmp_path / "q"), quick=True)
  assert quick.verdict == P.NOT_ASSESSED and quick.seeds == [0] and len(quick.checks) == 3
  # ... and plots only the summary (the per-group figures are the full run's).
  assert sorted(os.listdir(tmp_path / "q" / "seed0" / "model" / "plots")) == ["summary.png"]


def test_runner_refuses_module_without_baseline_prerequisite(tmp_path, monkeypatch):
  mod = _fake_module("bad", [_seed()], checks=(CLAIM_A,))
  monkeypatch.setitem(sys.modules, "tokenlab.repro.bad", mod)
  monkeypatch.setattr(repro, "names", lambda: ["bad"])
  with pytest.raises(TokenlabError, match="no prerequisite compares"):
    repro.run("bad", workdir=str(tmp_path))
  assert not (tmp_path / "repro.json").exists()


def test_ngram_baseline_against_exact_counts():
  from tokenlab.repro.baselines import NGram, answer_prior_accuracy, uniform_nll
  import math
  seqs = [[0, 1, 0, 1, 0, 2], [1, 0, 1, 0]]
  m = NGram(order=2, vocab=3, alpha=0.5).fit(seqs)
  # Unigram counts: 0 x5, 1 x4, 2 x1 (10 tokens); bigram after 0: 1 x3, 2 x1.
  p_uni = [(5 + 1.5 / 3) / 11.5, (4 + 1.5 / 3) / 11.5, (1 + 1.5 / 3) / 11.5]
  assert m.prob([], 2) == pytest.approx(p_uni[2])
  assert m.prob([1, 0], 1) == pytest.approx((3 + 1.5 * p_uni[1]) / (4 + 1.5))
  assert sum(m.prob([0], y) for y in range(3)) == pytest.approx(1.0)
  nll = m.nll([[0, 1, 0]])
  assert nll.shape == (1, 3) and nll[0, 1] == pytest.approx(-math.log(m.prob([0], 1)))
  inputs, targets = np.array([[0, 1]]), np.array([[1, 0]])
  assert m.nll_of(inputs, targets)[0] == pytest.approx(nll[0, 1:])
  # A deterministic alternating source: the bigram beats the uniform law.
  assert m.nll([[0, 1, 0, 1, 0, 1]], skip=1).mean() < uniform_nll(3)
  assert answer_prior_accuracy([("c", 1), ("c", 1), ("c", 2), ("l", 0)],
                               [("c", 1), ("c", 2), ("l", 0), ("x", 1)]) == 0.75
