"""Fourier head (tokenlab.nn.fourier_head, method fourier_head): the head's invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.nn.fourier_head import (FourierHead, autocorrelate, bin_centres, fourier_density,
                                      fourier_pmf, fourier_smoothness_penalty)


_pmf = jax.jit(fourier_pmf, static_argnums=2)


def _coeffs(n, batch=5, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch, n + 1)).astype(np.float32),
          rng.normal(size=(batch, n + 1)).astype(np.float32))


def test_autocorrelation_matches_numpy_complex():
  re, im = _coeffs(6)
  c_re, c_im = autocorrelate(jnp.asarray(re), jnp.asarray(im))
  a = re.astype(np.complex128) + 1j * im
  for b in range(len(a)):
    want = [np.sum(a[b, k:] * np.conj(a[b, :len(a[b]) - k])) for k in range(a.shape[1])]
    np.testing.assert_allclose(c_re[b] + 1j * np.asarray(c_im[b]), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 4, 16, 32])
def test_pmf_is_non_negative_and_normalised(n):
  re, im = _coeffs(n, batch=64, seed=n)
  pmf, coeffs = _pmf(jnp.asarray(re), jnp.asarray(im), 64)
  assert pmf.shape == (64, 64) and coeffs.shape == (64, n + 1, 2)
  assert float(pmf.min()) >= 0.0
  np.testing.assert_allclose(pmf.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(coeffs[:, 0, 0], 1.0, rtol=1e-6)   # c_0 normalised


def test_density_is_the_squared_modulus_and_integrates_to_one():
  re, im = _coeffs(5, batch=3)
  pmf, coeffs = _pmf(jnp.asarray(re), jnp.asarray(im), 8)
  x = np.linspace(-1, 1, 4001)
  p = np.asarray(fourier_density(coeffs[..., 0], coeffs[..., 1], jnp.asarray(x, jnp.float32)))
  a = re + 1j * im
  f = np.einsum("bj,jx->bx", a, np.exp(1j * np.pi * np.arange(a.shape[1])[:, None] * x))
  want = np.abs(f) ** 2 / (2 * np.sum(np.abs(a) ** 2, -1, keepdims=True))
  np.testing.assert_allclose(p, want, rtol=1e-3, atol=1e-4)
  assert p.min() >= -1e-6
  np.testing.assert_allclose(np.trapezoid(p, x, axis=-1), 1.0, rtol=1e-3)


def test_zero_frequencies_and_dc_only_coefficients_give_the_uniform_law():
  re, im = _coeffs(0)
  pmf, _ = _pmf(jnp.asarray(re), jnp.asarray(im), 50)
  np.testing.assert_allclose(pmf, 1 / 50, rtol=1e-6)
  re, im = np.zeros((2, 9), np.float32), np.zeros((2, 9), np.float32)
  re[:, 0], im[:, 0] = [0.3, -2.0], [1.0, 0.0]
  pmf, coeffs = _pmf(jnp.asarray(re), jnp.asarray(im), 50)
  np.testing.assert_allclose(pmf, 1 / 50, rtol=1e-6)
  assert float(fourier_smoothness_penalty(coeffs).max()) == 0.0


def test_regulariser_is_twice_the_squared_derivative_norm():
  re, im = _coeffs(6, batch=2, seed=3)
  _, coeffs = _pmf(jnp.asarray(re), jnp.asarray(im), 8)
  x = np.linspace(-1, 1, 20001)
  p = np.asarray(fourier_density(coeffs[..., 0], coeffs[..., 1], jnp.asarray(x, jnp.float32)),
                 np.float64)
  dp = np.gradient(p, x, axis=-1)
  np.testing.assert_allclose(fourier_smoothness_penalty(coeffs),
                             2 * np.trapezoid(dp ** 2, x, axis=-1), rtol=2e-3)


def test_bin_centres():
  np.testing.assert_allclose(bin_centres(4), [-0.75, -0.25, 0.25, 0.75])


def test_head_module_is_a_drop_in_for_logits():
  head = FourierHead(num_bins=20, num_frequencies=3)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  params = jax.jit(head.init)(jax.random.key(1), x)["params"]
  logits, aux = jax.jit(lambda p, x: head.apply({"params": p}, x, return_aux=True))(params, x)
  assert logits.shape == (2, 5, 20)
  np.testing.assert_allclose(jax.nn.softmax(logits, -1), aux["pmf"], atol=2e-4)
  assert params["coefficients"]["kernel"].value.shape == (16, 2, 4)


def test_method_loss_metrics_and_task():
  from tokenlab.methods.fourier_head import (BinMarkovIterator, FourierHeadConfig,
                                             FourierHeadLM, transition_matrix)
  from ml_collections import ConfigDict
  trans = transition_matrix(16)
  np.testing.assert_allclose(trans.sum(1), 1.0)
  task = ConfigDict(dict(num_bins=16, seq_len=8, sigma=0.1, data_seed=1, num_train=10))
  it = BinMarkovIterator(task, 4, seed=0)
  batch = next(it)
  state = it.get_state()
  again = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["inputs"], again["inputs"])
  np.testing.assert_allclose(batch["true_probs"], trans[batch["inputs"]])
  for head in ("fourier", "linear"):
    method = FourierHeadLM(FourierHeadConfig(vocab_size=16, d_model=16, num_layers=1,
                                             num_heads=2, head=head, num_frequencies=4))
    # Shapes only, numpy values: compiling the random init is slow on a busy CPU.
    shapes = jax.eval_shape(method.init, jax.random.key(0), batch)
    shapes = jax.tree.map(lambda b: getattr(b, "value", b), shapes,
                          is_leaf=lambda b: hasattr(b, "value"))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.1).astype(np.float32), shapes)
    loss, metrics = jax.jit(method.loss)(params, batch, jax.random.key(0))
    assert np.isfinite(float(loss)) and float(metrics["kl"].value()) > 0
    assert ("smoothness_penalty" in metrics) == (head == "fourier")
    assert method.flops_per_token(8) > 0


def test_experiment_variants():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=small,head=linear", "size=base,freqs=16"):
    c = load_config(f"experiments/fourier_head.py:{arg}")
    assert c.model.vocab_size == c.task.num_bins and c.model.name == "fourier_head"


def test_repro_scores_and_count_baseline():
  """The reproduction's exact metrics: the truth has KL 0, the uniform law KL = ln B - mean
  H(truth); the count bigram's rows are pmfs and it beats the uniform law on 4096 pairs."""
  from tokenlab.methods.fourier_head import sample_chain, transition_matrix
  from tokenlab.repro.fourier_head import KL, NLL, count_pmfs, scores, tune_alpha
  trans = transition_matrix(16)
  assert scores(trans, trans)[KL] == pytest.approx(0.0, abs=1e-9)
  u = scores(np.full((16, 16), 1 / 16), trans)
  h = -np.sum(np.where(trans > 0, trans * np.log(np.where(trans > 0, trans, 1)), 0), 1)
  assert u[KL] == pytest.approx(np.log(16) - h.mean(), rel=1e-9)
  assert u[NLL] == pytest.approx(np.log(16), rel=1e-9)
  pairs = sample_chain(trans, 4096, 2, np.random.default_rng(0))
  alpha = tune_alpha(pairs, 16)
  q = count_pmfs(pairs, 16, alpha)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-9)
  assert scores(q, trans)[KL] < 0.5 * u[KL]


def test_repro_quick(tmp_path):
  import json
  from tokenlab import repro
  report = repro.run("fourier_head", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "fourier_head.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {"fourier_lower_kl", "network_reaches_counts"} <= {c["name"] for c in data["checks"]}
  rows = {(a, m): v for a, m, v, _, _ in report.rows}
  assert rows[("uniform", "KL(truth||model) nats")] > rows[("bigram (counts)",
                                                            "KL(truth||model) nats")] > 0
  assert np.isfinite(rows[("fourier_N4", "KL(truth||model) nats")])
