"""Invariants of tokenlab.nn.quantizers: straight-through gradients, the EMA update formula,
dead-code restart, code round trips, Gaussian-quantile bins, RVQ residuals, metrics, jit.

Each test jits its quantizer calls into one or two functions (eager dispatch compiles every
primitive separately, several times slower on CPU) and checks the results with numpy.
"""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.nn import quantizers as qz


def _z(shape, seed=0, scale=1.0, dtype=np.float32):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def _stats(codebook):
  """vq_stats of one VectorQuantizer starting from `codebook` (as its init would build)."""
  s = qz.init_vq_state(np.asarray(codebook))
  return {"codebook": s.codebook, "cluster_size": np.asarray(s.cluster_size),
          "embed_sum": s.embed_sum, "unused": np.zeros(len(codebook), np.int32)}


def _train_fn(vq):
  """jitted (vq_stats, z, seed) -> (Quantized, new vq_stats) of a training call."""
  def f(stats, z, seed):
    out, upd = vq.apply({"vq_stats": stats}, z, train=True, mutable=["vq_stats"],
                        rngs={"quantizer": jax.random.key(seed)})
    return out, upd["vq_stats"]
  return jax.jit(f)


# --- straight-through gradients -------------------------------------------------------------


@pytest.mark.parametrize("name", ["vq", "vq_param", "rvq", "lfq", "quantile"])
def test_straight_through_gradient_is_identity(name):
  # The forward value is a lookup, so d loss / d z must equal d loss / d values exactly
  # (loss = sum(w * values^2), d loss / d values = 2 w values).
  z, w = _z((2, 5, 4), seed=1), _z((2, 5, 4), seed=2)
  cb = _z((8, 4), seed=3)
  if name == "vq":
    vq, stats = qz.VectorQuantizer(codebook_size=8, dim=4), _stats(cb)
    quant = lambda x: vq.apply({"vq_stats": stats}, x)
  elif name == "vq_param":
    vq = qz.VectorQuantizer(codebook_size=8, dim=4, ema=False)
    quant = lambda x: vq.apply({"params": {"codebook": cb}}, x)
  elif name == "rvq":
    rvq = qz.ResidualVQ(levels=2, codebook_size=8, dim=4)
    stats = {"level_0": _stats(cb), "level_1": _stats(0.3 * cb)}
    quant = lambda x: rvq.apply({"vq_stats": stats}, x)
  elif name == "lfq":
    quant = qz.LFQ(dim=4)
  else:
    quant = qz.GaussianQuantile(dim=4, bins=8)
  f = lambda v: jnp.sum(w * v ** 2)
  values, grad_z = jax.jit(lambda x: (quant(x).values, jax.grad(lambda y: f(quant(y).values))(x)))(z)
  np.testing.assert_allclose(grad_z, 2 * w * np.asarray(values), rtol=1e-6)
  assert np.abs(grad_z).sum() > 0


def test_fsq_and_binary_gradients_go_through_the_unrounded_path():
  # FSQ rounds after a tanh bound and Binary samples sigmoid(logits): the straight-through
  # gradient is that of the bound (/ L // 2) and of the probabilities.
  z, w = _z((3, 4), seed=3), _z((3, 4), seed=4)
  fsq = qz.FSQ(levels=(8, 5, 5, 5))
  binary = qz.BinaryQuantizer(num_bits=4)
  hw = jnp.asarray([4.0, 2.0, 2.0, 2.0])
  lin = lambda q, **kw: jax.grad(lambda x: jnp.sum(w * q(x, **kw).values))(z)

  @jax.jit
  def grads(z):
    return (lin(fsq), jax.grad(lambda x: jnp.sum(w * fsq.bound(x) / hw))(z),
            lin(binary), lin(binary, train=True, rng=jax.random.key(0)))
  got, want, bin_eval, bin_train = grads(z)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  p = 1 / (1 + np.exp(-z))
  for g in (bin_eval, bin_train):
    np.testing.assert_allclose(g, w * p * (1 - p), rtol=1e-5)
    assert np.abs(g).min() > 0


def test_vq_losses_and_codebook_gradient():
  z, cb = _z((6, 3), seed=5), _z((4, 3), seed=6)
  q = cb[np.argmin(((z[:, None] - cb[None]) ** 2).sum(-1), axis=1)]
  learned = qz.VectorQuantizer(codebook_size=4, dim=3, ema=False, commitment_cost=0.25)
  ema, stats = qz.VectorQuantizer(codebook_size=4, dim=3, commitment_cost=0.25), _stats(cb)

  @jax.jit
  def run(z):
    loss = lambda p: learned.apply({"params": p}, z).loss
    return (loss({"codebook": cb}), jax.grad(loss)({"codebook": cb})["codebook"],
            ema.apply({"vq_stats": stats}, z))
  loss, grad_cb, out = run(z)
  # Learned codebook: |sg(z) - q|^2 + beta |z - sg(q)|^2; EMA: only the commitment term.
  np.testing.assert_allclose(loss, 1.25 * np.mean((z - q) ** 2), rtol=1e-5)
  np.testing.assert_allclose(out.loss, 0.25 * np.mean((z - q) ** 2), rtol=1e-5)
  # The codebook loss moves exactly the used codes: d/de_k = -2 sum_{i->k} (z_i - e_k) / n.
  codes = np.asarray(out.codes)
  for k in range(4):
    want = -2 * (z[codes == k] - cb[k]).sum(0) / z.size
    np.testing.assert_allclose(grad_cb[k], want, rtol=1e-5, atol=1e-7)


# --- EMA update and dead-code restart -------------------------------------------------------


def test_ema_update_follows_the_decay_formula():
  with jax.enable_x64(True):
    cb, z = _z((4, 3), seed=6, dtype=np.float64), _z((10, 3), seed=7, dtype=np.float64)
    state = qz.init_vq_state(jnp.asarray(cb))
    codes = np.asarray([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])              # code 3 unused
    d, eps = 0.9, 0.1
    update = jax.jit(lambda s, z, c, e: qz.ema_update(s, z, c, decay=d, epsilon=e),
                     static_argnums=3)
    new, smooth = update(state, z, codes, 0.0), update(state, z, codes, eps)
    for k in range(4):
      n, s = (codes == k).sum(), z[codes == k].sum(0)
      np.testing.assert_allclose(new.cluster_size[k], d * 1.0 + (1 - d) * n, rtol=1e-12)
      np.testing.assert_allclose(new.embed_sum[k], d * cb[k] + (1 - d) * s, rtol=1e-12)
      np.testing.assert_allclose(new.codebook[k], (d * cb[k] + (1 - d) * s) / (d + (1 - d) * n),
                                 rtol=1e-12)
      if n:   # an assigned code moves towards the mean of its vectors
        assert np.linalg.norm(new.codebook[k] - s / n) < np.linalg.norm(cb[k] - s / n)
    np.testing.assert_allclose(new.codebook[3], cb[3], rtol=1e-12)   # unassigned: unchanged
    np.testing.assert_array_equal(new.unused, [0, 0, 0, 1])
    # Laplace smoothing: codebook = embed_sum / ((c + eps) / (N + K eps) * N).
    c = np.asarray(smooth.cluster_size)
    np.testing.assert_allclose(smooth.codebook, np.asarray(smooth.embed_sum)
                               / ((c + eps) / (c.sum() + 4 * eps) * c.sum())[:, None], rtol=1e-12)


def test_vq_module_applies_the_ema_update_only_when_training():
  with jax.enable_x64(True):
    z, cb = _z((3, 4, 2), seed=8, dtype=np.float64), _z((5, 2), seed=9, dtype=np.float64)
    vq = qz.VectorQuantizer(codebook_size=5, dim=2, decay=0.8, epsilon=1e-5,
                            param_dtype=jnp.float64)
    stats = _stats(cb)

    @jax.jit
    def run(z):
      call = lambda train: vq.apply({"vq_stats": stats}, z, train=train, mutable=["vq_stats"])
      (out, same), (_, new) = call(False), call(True)
      want = qz.ema_update(qz.VQState(**stats), z, out.codes, decay=0.8, epsilon=1e-5)
      return out, same["vq_stats"], new["vq_stats"], want
    out, same, new, want = run(z)
    for k in stats:
      np.testing.assert_array_equal(same[k], stats[k])
    np.testing.assert_allclose(new["codebook"], want.codebook, rtol=1e-12)
    np.testing.assert_allclose(new["cluster_size"], want.cluster_size, rtol=1e-12)
    # values use the codebook before the update; codes are its nearest entries.
    nearest = np.argmin(((z[..., None, :] - cb) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(out.codes, nearest)
    np.testing.assert_array_equal(out.values, cb[nearest])


def test_dead_code_restart_replaces_a_never_used_code_with_a_batch_vector():
  z = _z((16, 2), seed=10)
  cb = _z((4, 2), seed=11)
  cb[3] = [100.0, 100.0]                                           # never the nearest code
  vq = qz.VectorQuantizer(codebook_size=4, dim=2, decay=0.9, dead_after=2)
  step = _train_fn(vq)
  out, stats = step(_stats(cb), z, 1)
  assert int(stats["unused"][3]) == 1 and float(out.metrics["restarted"]) == 0
  assert float(stats["codebook"][3, 0]) > 50                       # not yet dead
  out, stats = step(stats, z, 2)
  assert 3 not in np.asarray(out.codes) and float(out.metrics["restarted"]) >= 1
  row = np.asarray(stats["codebook"][3])
  assert np.any(np.all(z == row, axis=1)), "restarted code is not a batch vector"
  assert int(stats["unused"][3]) == 0 and float(stats["cluster_size"][3]) == 1.0
  np.testing.assert_array_equal(stats["embed_sum"][3], row)


def test_threshold_restart_in_the_pure_function():
  z = _z((8, 3), seed=12)
  state = qz.init_vq_state(jnp.asarray(_z((5, 3), seed=13)))
  state = state.replace(cluster_size=jnp.asarray([2.0, 0.1, 3.0, 0.2, 5.0]))
  new, n = jax.jit(lambda s, z: qz.restart_dead_codes(s, z, jax.random.key(0), threshold=0.5))(
      state, z)
  assert int(n) == 2
  for k in (1, 3):
    assert np.any(np.all(z == np.asarray(new.codebook[k]), axis=1))
    assert float(new.cluster_size[k]) == 1.0
  for k in (0, 2, 4):
    np.testing.assert_array_equal(new.codebook[k], state.codebook[k])


# --- RVQ ------------------------------------------------------------------------------------


def test_rvq_fitted_levels_shrink_the_residual_and_decode_round_trips():
  # Nearest-neighbour alone does not guarantee a smaller residual (a random codebook may have no
  # entry nearer than the origin); after EMA fitting (k-means on each level's residuals) each
  # level must remove a clear share of the energy left.
  z = _z((256, 4), seed=14)
  rvq = qz.ResidualVQ(levels=3, codebook_size=16, dim=4, decay=0.7, dead_after=3,
                      init_scale=0.3)
  stats = jax.jit(rvq.init)(jax.random.key(0), z)["vq_stats"]

  @jax.jit
  def fit(stats):
    def body(stats, seed):
      _, upd = rvq.apply({"vq_stats": stats}, z, train=True, mutable=["vq_stats"],
                         rngs={"quantizer": jax.random.key(seed)})
      return upd["vq_stats"], None
    stats = jax.lax.scan(body, stats, jnp.arange(25))[0]
    out = rvq.apply({"vq_stats": stats}, z)
    return stats, out, rvq.apply({"vq_stats": stats}, out.codes, method="decode")
  stats, out, decoded = fit(stats)
  energies, residual = [np.mean(np.sum(z ** 2, -1))], z
  for lvl in range(3):
    residual = residual - np.asarray(stats[f"level_{lvl}"]["codebook"])[out.codes[:, lvl]]
    energies.append(np.mean(np.sum(residual ** 2, -1)))
  for before, after in zip(energies, energies[1:]):
    assert after < 0.8 * before, energies
  np.testing.assert_array_equal(decoded, out.values)
  np.testing.assert_allclose(out.values, z - residual, atol=1e-5)
  assert out.codes.shape == (256, 3) and float(out.metrics["bits_per_token"]) == 12.0


# --- FSQ / LFQ / binary ----------------------------------------------------------------------


def test_fsq_codes_round_trip_and_cover_the_grid():
  fsq = qz.FSQ(levels=(8, 5, 5, 5))
  assert fsq.codebook_size == 1000 and math.isclose(fsq.bits_per_token, math.log2(1000))

  @jax.jit
  def run(z):
    values = fsq.decode(jnp.arange(1000))
    return values, fsq.values_to_codes(values), fsq(z), fsq.bound(jnp.zeros(4))
  values, codes, out, at_zero = run(_z((4000, 4), seed=15, scale=3.0))
  np.testing.assert_array_equal(codes, np.arange(1000))
  assert len({tuple(v) for v in np.asarray(values)}) == 1000
  # z -> codes -> decode gives exactly the quantized values, and every level is reached.
  np.testing.assert_array_equal(np.asarray(values)[out.codes], out.values)
  assert np.abs(out.values).max() <= 1.0
  for i, n in enumerate((8, 5, 5, 5)):
    assert len(np.unique(np.asarray(out.values[:, i]))) == n
  np.testing.assert_array_equal(at_zero, np.zeros(4))
  assert float(out.loss) == 0.0 and float(out.metrics["usage"]) > 0.5


def test_lfq_round_trip_and_entropies():
  lfq, factorised = qz.LFQ(dim=3), qz.LFQ(dim=3, exact_entropy_max_bits=0)
  z = _z((50, 3), seed=16)

  @jax.jit
  def run(z):
    every = 2.0 * lfq.decode(jnp.arange(8))     # each code once, far from the boundaries
    return (lfq(z), lfq.decode(lfq(z).codes), every, lfq.entropies(every),
            factorised.entropies(every), lfq.entropies(jnp.ones((8, 3))),
            jax.grad(lambda x: lfq(x).loss)(z), jax.grad(lambda x: factorised(x).loss)(z))
  out, decoded, every, exact, fact, collapsed, grad, grad_f = run(z)
  np.testing.assert_array_equal(decoded, out.values)
  np.testing.assert_array_equal(out.codes, ((z > 0) * [1, 2, 4]).sum(-1))
  np.testing.assert_array_equal(every[5], [2.0, -2.0, 2.0])        # 5 = 0b101, bit 0 first
  # Confident samples (entropy ~ 0) and a uniform batch (entropy 3 ln 2), exact or factorised.
  for sample, batch in (exact, fact):
    assert float(sample) < 1e-6
    np.testing.assert_allclose(batch, 3 * math.log(2), rtol=1e-6)
  assert float(collapsed[1]) < 1e-6                                # one code: batch entropy 0
  assert np.all(np.isfinite(grad)) and np.all(np.isfinite(grad_f))  # saturated sigmoids too


def test_binary_sampling_threshold_and_vocabulary_decomposition():
  logits = np.asarray([[-3.0, 0.5, 2.0, -0.1]], np.float32)
  binary = qz.BinaryQuantizer(num_bits=4)
  with pytest.raises(Exception, match="rng"):
    binary(logits, train=True)
  codes = np.asarray([0, 1, 255, 256, 40000, 65535])
  bits = _z((20, 16), seed=17)
  quants = [qz.BinaryQuantizer(num_bits=16, sub_bits=k) for k in (None, 8, 5)]

  @jax.jit
  def run(logits, bits):
    many = jnp.broadcast_to(logits, (4000, 4))
    outs = [q(bits) for q in quants]
    return (binary(logits), binary(many, train=True, rng=jax.random.key(1)).values.mean(0),
            qz.split_code(codes, 16, 8), qz.merge_codes(qz.split_code(codes, 16, 8), 8),
            qz.merge_codes(qz.split_code(codes, 16, 5), 5),
            outs, [q.decode(o.codes) for q, o in zip(quants, outs)],
            qz.split_code(outs[0].codes, 16, 8))
  out, freq, sub, merged8, merged5, outs, decoded, split_whole = run(logits, bits)
  np.testing.assert_array_equal(out.values, [[0.0, 1.0, 1.0, 0.0]])   # threshold at eval
  assert int(out.codes[0]) == 0b0110
  np.testing.assert_allclose(freq, 1 / (1 + np.exp(-logits[0])), atol=0.03)   # Bernoulli
  # code = hi * 2^k + lo (ELM's 16-bit code as 2 x 8-bit sub-tokens), and back.
  np.testing.assert_array_equal(sub[:, 0] * 256 + sub[:, 1], codes)
  np.testing.assert_array_equal(merged8, codes)
  np.testing.assert_array_equal(merged5, codes)
  # The quantizer's sub-tokens are the split of its whole code; decode inverts every form.
  np.testing.assert_array_equal(outs[1].codes, split_whole)
  assert outs[2].codes.shape == (20, 4)
  for o, d in zip(outs, decoded):
    np.testing.assert_array_equal(d, o.values)
    assert float(o.metrics["bits_per_token"]) == 16.0


# --- Gaussian quantile ----------------------------------------------------------------------


@pytest.mark.parametrize("centres", ["mean", "median"])
def test_gaussian_quantile_bins_monotone_and_round_trip(centres):
  edges, mids = qz.gaussian_quantile_bins(16, centres)
  n = statistics.NormalDist()
  assert np.all(np.diff(edges) > 0) and np.all(np.diff(mids) > 0)
  assert np.all(mids[:-1] < edges) and np.all(edges < mids[1:])    # each centre inside its bin
  np.testing.assert_allclose([n.cdf(e) for e in edges], np.arange(1, 16) / 16, atol=1e-12)
  if centres == "mean":
    # The truncated-normal mean of bin [a, b], checked by quadrature.
    xs = np.linspace(edges[6], edges[7], 20001)
    pdf = np.exp(-xs ** 2 / 2)
    np.testing.assert_allclose(mids[7], np.trapezoid(xs * pdf, xs) / np.trapezoid(pdf, xs),
                               rtol=1e-6)
  gq = qz.GaussianQuantile(dim=3, bins=16, centres=centres)
  codes = np.random.default_rng(18).integers(0, 16, (40, 3)).astype(np.int32)
  z = np.sort(_z((1000,), seed=19))[:, None] * np.ones(3, np.float32)

  @jax.jit
  def run(codes, z):
    centre_values = gq.decode(codes)
    return centre_values, gq(centre_values), gq(z)
  centre_values, out, outz = run(codes, z)
  np.testing.assert_array_equal(out.codes, codes)                  # code -> centre -> code
  np.testing.assert_array_equal(out.values, centre_values)
  assert np.all(np.diff(np.asarray(outz.codes[:, 0])) >= 0)        # codes monotone in z
  assert float(outz.metrics["perplexity"]) > 15.0                  # equal-mass bins on N(0, 1)


# --- metrics and jit ------------------------------------------------------------------------


def test_code_metrics_on_hand_built_distributions():
  @jax.jit
  def run():
    return (qz.code_metrics(jnp.asarray([0, 0, 1, 1])[:, None], 4, 2.0),
            qz.code_metrics(jnp.asarray([3, 3, 3, 1])[:, None], 8, 3.0),
            qz.code_metrics(jnp.asarray([[0, 0], [1, 0], [2, 0], [3, 0]]), 4, 4.0))
  half, skewed, streams = run()
  np.testing.assert_allclose([half["usage"], half["perplexity"], half["bits_per_token"]],
                             [0.5, 2.0, 2.0])
  h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  np.testing.assert_allclose([skewed["usage"], skewed["perplexity"]], [0.25, math.exp(h)],
                             rtol=1e-6)
  # Two streams (uniform over 4 codes; one code): means of (1, 1/4) and (4, 1).
  np.testing.assert_allclose([streams["usage"], streams["perplexity"]], [0.625, 2.5], rtol=1e-6)


def test_init_train_step_and_properties():
  # (Every test above runs its quantizers under jit.)
  z = _z((2, 3, 4), seed=20)
  vq = qz.VectorQuantizer(codebook_size=8, dim=4, dead_after=1)
  stats = jax.jit(vq.init)(jax.random.key(0), z)["vq_stats"]
  assert stats["codebook"].shape == (8, 4) and stats["unused"].dtype == np.int32
  np.testing.assert_array_equal(stats["embed_sum"], stats["codebook"])
  np.testing.assert_array_equal(stats["cluster_size"], np.ones(8))
  out, new = _train_fn(vq)(stats, z, 1)
  assert out.codes.shape == (2, 3) and out.values.shape == z.shape
  assert set(new) == set(stats) and set(out.metrics) == {"usage", "perplexity",
                                                         "bits_per_token", "restarted"}
  fsq = qz.FSQ(levels=(4, 4, 3, 3))
  cases = [(fsq, 144, math.log2(144)), (qz.LFQ(dim=4), 16, 4.0),
           (qz.GaussianQuantile(dim=4, bins=8), 8, 12.0),
           (qz.BinaryQuantizer(num_bits=4, sub_bits=2), 4, 4.0), (vq, 8, 3.0),
           (qz.ResidualVQ(levels=3, codebook_size=8, dim=4), 8, 9.0)]
  for q, size, bits in cases:
    assert q.codebook_size == size and q.bits_per_token == pytest.approx(bits)
