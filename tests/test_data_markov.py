"""The Markov source against its exact formulas (stationary law, entropy rate, unigram)."""

import math

import numpy as np
import pytest

from tokenlab.data import markov


def test_formulas_known_values():
  # Values quoted in the paper notes: p=q=0.8 -> H=0.722, p=q=0.9 -> H=0.469, unigram 1.
  assert markov.entropy_rate_bits(0.8, 0.8) == pytest.approx(0.7219, abs=1e-4)
  assert markov.entropy_rate_bits(0.9, 0.9) == pytest.approx(0.4690, abs=1e-4)
  assert markov.unigram_entropy_bits(0.8, 0.8) == pytest.approx(1.0)
  assert markov.stationary(0.2, 0.6) == pytest.approx((0.75, 0.25))
  assert markov.unigram_entropy_bits(0.2, 0.6) == pytest.approx(
      -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
  assert markov.entropy_rate_bits(1.0, 1.0) == 0.0  # Deterministic alternation.


def _empirical(x: np.ndarray, k: int):
  prev, cur = x[:, :-k].ravel(), x[:, k:].ravel()
  p_hat = cur[prev == 0].mean()        # P(x_n = 1 | x_{n-k} = 0)
  q_hat = 1 - cur[prev == 1].mean()    # P(x_n = 0 | x_{n-k} = 1)
  joint = np.bincount(prev * 2 + cur, minlength=4) / len(cur)
  marg = joint.reshape(2, 2).sum(1)
  cond_h = -sum(joint[2 * a + b] * math.log2(joint[2 * a + b] / marg[a])
                for a in (0, 1) for b in (0, 1) if joint[2 * a + b] > 0)
  return p_hat, q_hat, x.mean(), cond_h


@pytest.mark.parametrize("k,p,q", [(4, 0.8, 0.8), (3, 0.2, 0.6)])
def test_generator_matches_exact_statistics(k, p, q):
  x = markov.generate(k, p, q, length=512, num=400, rng=np.random.default_rng(1))
  assert x.shape == (400, 512) and set(np.unique(x)) <= {0, 1}
  p_hat, q_hat, ones, cond_h = _empirical(x, k)
  # ~200k transitions: standard errors are ~1e-3, tolerances are several of them.
  assert p_hat == pytest.approx(p, abs=0.01)
  assert q_hat == pytest.approx(q, abs=0.01)
  assert ones == pytest.approx(markov.stationary(p, q)[1], abs=0.01)
  assert cond_h == pytest.approx(markov.entropy_rate_bits(p, q), abs=0.01)
  # Stationary from the first symbol on: the first k symbols follow pi too.
  assert x[:, :k].mean() == pytest.approx(markov.stationary(p, q)[1], abs=0.03)


def test_lag_one_carries_no_information_when_k_above_one():
  # x_n depends on x_{n-4} only: knowing x_{n-1} must not change P(x_n = 1).
  x = markov.generate(4, 0.8, 0.8, length=512, num=400, rng=np.random.default_rng(2))
  prev, cur = x[:, :-1].ravel(), x[:, 1:].ravel()
  assert cur[prev == 0].mean() == pytest.approx(cur[prev == 1].mean(), abs=0.01)
