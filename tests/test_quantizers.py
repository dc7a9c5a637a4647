"""Invariants of tokenlab.nn.quantizers: straight-through gradients, the EMA update formula,
dead-code restart, code round trips, Gaussian-quantile bins, RVQ residuals, metrics, jit."""

import math
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest


from tokenlab.nn import quantizers as qz


def _z(shape, seed=0, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _vq_apply(vq, variables, z, train=False, seed=0):
  """(Quantized, new vq_stats) of a VectorQuantizer / ResidualVQ call."""
  out, upd = vq.apply(variables, z, train=train, mutable=["vq_stats"],
                      rngs={"quantizer": jax.random.key(seed)})
  return out, upd["vq_stats"]


# --- straight-through gradients -------------------------------------------------------------


@pytest.mark.parametrize("name", ["vq", "vq_param", "rvq", "lfq", "quantile"])
def test_straight_through_gradient_is_identity(name):
  # For these the forward value is a lookup: d loss / d z must equal d loss / d values exactly.
  z = _z((2, 5, 4), seed=1)
  w = _z((2, 5, 4), seed=2)
  if name in ("vq", "vq_param", "rvq"):
    mod = (qz.ResidualVQ(levels=2, codebook_size=8, dim=4) if name == "rvq" else
           qz.VectorQuantizer(codebook_size=8, dim=4, ema=(name == "vq")))
    variables = mod.init(jax.random.key(0), z)
    quant = lambda x: mod.apply(variables, x)
  elif name == "lfq":
    quant = qz.LFQ(dim=4)
  else:
    quant = qz.GaussianQuantile(dim=4, bins=8)
  f = lambda v: jnp.sum(w * v ** 2)
  values = quant(z).values
  grad_z = jax.grad(lambda x: f(quant(x).values))(z)
  np.testing.assert_array_equal(grad_z, jax.grad(f)(values))
  assert float(jnp.abs(grad_z).sum()) > 0


def test_fsq_and_binary_gradients_go_through_the_unrounded_path():
  # FSQ rounds after a tanh bound and Binary samples sigmoid(logits): the straight-through
  # gradient is that of the bound / the probabilities.
  z = _z((3, 4), seed=3)
  w = _z((3, 4), seed=4)
  fsq = qz.FSQ(levels=(8, 5, 5, 5))
  hw = jnp.asarray([4.0, 2.0, 2.0, 2.0])
  got = jax.grad(lambda x: jnp.sum(w * fsq(x).values))(z)
  want = jax.grad(lambda x: jnp.sum(w * fsq.bound(x) / hw))(z)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  binary = qz.BinaryQuantizer(num_bits=4)
  for train in (False, True):
    got = jax.grad(lambda x: jnp.sum(w * binary(x, train=train, rng=jax.random.key(0)).values))(z)
    np.testing.assert_allclose(got, w * jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z)), rtol=1e-6)
    assert float(jnp.abs(got).min()) > 0


def test_vq_losses_and_codebook_gradient():
  z = _z((6, 3), seed=5)
  vq = qz.VectorQuantizer(codebook_size=4, dim=3, ema=False, commitment_cost=0.25)
  variables = nn.meta.unbox(vq.init(jax.random.key(0), z))
  cb = variables["params"]["codebook"]
  q = cb[jnp.argmin(((z[:, None] - cb[None]) ** 2).sum(-1), axis=1)]
  out = vq.apply(variables, z)
  np.testing.assert_allclose(out.loss, 1.25 * jnp.mean((z - q) ** 2), rtol=1e-5)
  # Codebook loss |sg(z) - q|^2 moves the used codes towards their inputs.
  g = jax.grad(lambda p: vq.apply({"params": p}, z).loss)(variables["params"])["codebook"]
  used = np.unique(np.asarray(out.codes))
  assert np.all(np.abs(np.asarray(g)[used]).sum(-1) > 0)
  # EMA mode: only the commitment term.
  ema = qz.VectorQuantizer(codebook_size=4, dim=3, commitment_cost=0.25)
  v2 = ema.init(jax.random.key(0), z)
  cb2 = v2["vq_stats"]["codebook"]
  q2 = cb2[ema.apply(v2, z).codes]
  np.testing.assert_allclose(ema.apply(v2, z).loss, 0.25 * jnp.mean((z - q2) ** 2), rtol=1e-5)


# --- EMA update and dead-code restart -------------------------------------------------------


def test_ema_update_follows_the_decay_formula():
  with jax.enable_x64(True):
    rng = np.random.default_rng(6)
    cb = jnp.asarray(rng.normal(size=(4, 3)))
    state = qz.init_vq_state(cb)
    z = jnp.asarray(rng.normal(size=(10, 3)))
    codes = jnp.asarray([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])          # code 3 unused
    d = 0.9
    new = qz.ema_update(state, z, codes, decay=d, epsilon=0.0)
    zn, cn = np.asarray(z), np.asarray(codes)
    for k in range(4):
      n, s = (cn == k).sum(), zn[cn == k].sum(0)
      np.testing.assert_allclose(new.cluster_size[k], d * 1.0 + (1 - d) * n)
      np.testing.assert_allclose(new.embed_sum[k], d * cb[k] + (1 - d) * s)
      np.testing.assert_allclose(new.codebook[k], (d * cb[k] + (1 - d) * s) / (d + (1 - d) * n))
      if n:   # an assigned code moves towards the mean of its vectors
        mean = s / n
        assert np.linalg.norm(new.codebook[k] - mean) < np.linalg.norm(cb[k] - mean)
    np.testing.assert_allclose(new.codebook[3], cb[3])           # unassigned: unchanged
    np.testing.assert_array_equal(new.unused, [0, 0, 0, 1])
    # Laplace smoothing: codebook = embed_sum / ((c + eps) / (N + K eps) * N).
    eps = 0.1
    sm = qz.ema_update(state, z, codes, decay=d, epsilon=eps)
    c = np.asarray(sm.cluster_size)
    np.testing.assert_allclose(sm.codebook,
                               sm.embed_sum / ((c + eps) / (c.sum() + 4 * eps) * c.sum())[:, None])


def test_vq_module_applies_the_ema_update_only_when_training():
  with jax.enable_x64(True):
    z = jnp.asarray(np.random.default_rng(7).normal(size=(3, 4, 2)))
    vq = qz.VectorQuantizer(codebook_size=5, dim=2, decay=0.8, epsilon=1e-5,
                            param_dtype=jnp.float64)
    variables = vq.init(jax.random.key(0), z)
    stats = variables["vq_stats"]
    out, same = _vq_apply(vq, variables, z, train=False)
    for k in stats:
      np.testing.assert_array_equal(same[k], stats[k])
    out, new = _vq_apply(vq, variables, z, train=True)
    want = qz.ema_update(qz.VQState(**stats), z, out.codes, decay=0.8, epsilon=1e-5)
    np.testing.assert_allclose(new["codebook"], want.codebook, rtol=1e-12)
    np.testing.assert_allclose(new["cluster_size"], want.cluster_size, rtol=1e-12)
    # values used the codebook before the update; codes are its nearest entries.
    np.testing.assert_array_equal(out.values, stats["codebook"][out.codes])
    np.testing.assert_array_equal(out.codes, qz.nearest_code(z, stats["codebook"]))


def test_dead_code_restart_replaces_a_never_used_code_with_a_batch_vector():
  z = _z((16, 2), seed=8)
  vq = qz.VectorQuantizer(codebook_size=4, dim=2, decay=0.9, dead_after=2)
  variables = vq.init(jax.random.key(0), z)
  cb = variables["vq_stats"]["codebook"].at[3].set(jnp.asarray([100.0, 100.0]))  # never nearest
  variables = {"vq_stats": dict(variables["vq_stats"], codebook=cb, embed_sum=cb)}
  out, stats = _vq_apply(vq, variables, z, train=True, seed=1)
  assert int(stats["unused"][3]) == 1 and float(out.metrics["restarted"]) == 0
  assert float(stats["codebook"][3, 0]) > 50                     # not yet dead
  out, stats = _vq_apply(vq, {"vq_stats": stats}, z, train=True, seed=2)
  assert 3 not in np.asarray(out.codes) and float(out.metrics["restarted"]) >= 1
  row = np.asarray(stats["codebook"][3])
  assert np.any(np.all(np.asarray(z) == row, axis=1)), "restarted code is not a batch vector"
  assert int(stats["unused"][3]) == 0 and float(stats["cluster_size"][3]) == 1.0
  np.testing.assert_array_equal(stats["embed_sum"][3], row)


def test_threshold_restart_in_the_pure_function():
  z = _z((8, 3), seed=9)
  state = qz.init_vq_state(_z((5, 3), seed=10))
  state = state.replace(cluster_size=jnp.asarray([2.0, 0.1, 3.0, 0.2, 5.0]))
  new, n = qz.restart_dead_codes(state, z, jax.random.key(0), threshold=0.5)
  assert int(n) == 2
  for k in (1, 3):
    assert np.any(np.all(np.asarray(z) == np.asarray(new.codebook[k]), axis=1))
    assert float(new.cluster_size[k]) == 1.0
  for k in (0, 2, 4):
    np.testing.assert_array_equal(new.codebook[k], state.codebook[k])


# --- RVQ ------------------------------------------------------------------------------------


def test_rvq_fitted_levels_shrink_the_residual_and_decode_round_trips():
  # Nearest-neighbour alone does not guarantee a smaller residual (a random codebook may have no
  # entry nearer than the origin); after EMA fitting (k-means on each level's residuals) each
  # level must remove a clear share of the remaining energy.
  z = _z((256, 4), seed=11)
  rvq = qz.ResidualVQ(levels=3, codebook_size=16, dim=4, decay=0.7, dead_after=3,
                      init_scale=0.3)
  variables = rvq.init(jax.random.key(0), z)

  @jax.jit
  def step(stats, seed):
    out, upd = rvq.apply({"vq_stats": stats}, z, train=True, mutable=["vq_stats"],
                         rngs={"quantizer": jax.random.key(seed)})
    return upd["vq_stats"]

  stats = variables["vq_stats"]
  for i in range(25):
    stats = step(stats, i)
  out = rvq.apply({"vq_stats": stats}, z)
  energies = [float(jnp.mean(jnp.sum(z ** 2, -1)))]
  residual = z
  for lvl in range(3):
    residual = residual - stats[f"level_{lvl}"]["codebook"][out.codes[:, lvl]]
    energies.append(float(jnp.mean(jnp.sum(residual ** 2, -1))))
  for before, after in zip(energies, energies[1:]):
    assert after < 0.8 * before, energies
  np.testing.assert_array_equal(rvq.apply({"vq_stats": stats}, out.codes, method="decode"),
                                out.values)
  np.testing.assert_allclose(out.values, z - residual, atol=1e-5)
  assert out.codes.shape == (256, 3) and float(out.metrics["bits_per_token"]) == 12.0


# --- FSQ / LFQ / binary ----------------------------------------------------------------------


def test_fsq_codes_round_trip_and_cover_the_grid():
  fsq = qz.FSQ(levels=(8, 5, 5, 5))
  assert fsq.codebook_size == 1000 and math.isclose(fsq.bits_per_token, math.log2(1000))
  codes = jnp.arange(1000)
  values = fsq.decode(codes)
  np.testing.assert_array_equal(fsq.values_to_codes(values), codes)
  assert len({tuple(v) for v in np.asarray(values)}) == 1000
  z = _z((4000, 4), seed=12, scale=3.0)
  out = fsq(z)
  np.testing.assert_array_equal(fsq.decode(out.codes), out.values)
  assert np.abs(np.asarray(out.values)).max() <= 1.0
  for i, n in enumerate((8, 5, 5, 5)):
    assert len(np.unique(np.asarray(out.values[:, i]))) == n
  np.testing.assert_array_equal(fsq.bound(jnp.zeros(4)), jnp.zeros(4))
  assert float(out.loss) == 0.0


def test_lfq_round_trip_and_entropies():
  lfq = qz.LFQ(dim=3)
  z = _z((50, 3), seed=13)
  out = lfq(z)
  np.testing.assert_array_equal(lfq.decode(out.codes), out.values)
  np.testing.assert_array_equal(out.codes, qz.bits_to_code(z > 0))
  np.testing.assert_array_equal(lfq.decode(jnp.arange(8))[5], [1.0, -1.0, 1.0])   # 5 = 0b101
  # Every code once, far from the decision boundaries: confident samples (entropy ~ 0) and a
  # uniform batch (entropy = 3 ln 2), the same in the exact and factorised computations.
  uniform = 2.0 * lfq.decode(jnp.arange(8))
  for mode in (lfq, qz.LFQ(dim=3, exact_entropy_max_bits=0)):
    sample, batch = mode.entropies(uniform)
    assert float(sample) < 1e-6
    np.testing.assert_allclose(batch, 3 * math.log(2), rtol=1e-6)
  # One code only: batch entropy 0, so the entropy loss cannot be lowered by collapse.
  _, batch = lfq.entropies(jnp.ones((8, 3)))
  assert float(batch) < 1e-6
  loss = lambda x: lfq(x).loss
  assert bool(jnp.all(jnp.isfinite(jax.grad(loss)(z))))


def test_binary_sampling_threshold_and_vocabulary_decomposition():
  logits = jnp.asarray([[-3.0, 0.5, 2.0, -0.1]])
  binary = qz.BinaryQuantizer(num_bits=4)
  out = binary(logits)
  np.testing.assert_array_equal(out.values, [[0.0, 1.0, 1.0, 0.0]])
  assert int(out.codes[0]) == 0b0110
  many = jnp.broadcast_to(logits, (4000, 4))
  sampled = binary(many, train=True, rng=jax.random.key(1)).values
  np.testing.assert_allclose(sampled.mean(0), jax.nn.sigmoid(logits[0]), atol=0.03)
  with pytest.raises(Exception, match="rng"):
    binary(logits, train=True)
  # code = hi * 2^k + lo (ELM's 16-bit code as 2 x 8-bit sub-tokens), and back.
  codes = jnp.asarray([0, 1, 255, 256, 40000, 65535])
  sub = qz.split_code(codes, 16, 8)
  np.testing.assert_array_equal(sub[:, 0] * 256 + sub[:, 1], codes)
  np.testing.assert_array_equal(qz.merge_codes(sub, 8), codes)
  np.testing.assert_array_equal(qz.merge_codes(qz.split_code(codes, 16, 5), 5), codes)
  # The quantizer's sub-tokens agree with splitting its whole code; decode inverts them.
  bits = _z((20, 16), seed=14)
  whole = qz.BinaryQuantizer(num_bits=16)(bits)
  split = qz.BinaryQuantizer(num_bits=16, sub_bits=8)(bits)
  np.testing.assert_array_equal(split.codes, qz.split_code(whole.codes, 16, 8))
  for q, out in ((qz.BinaryQuantizer(num_bits=16), whole),
                 (qz.BinaryQuantizer(num_bits=16, sub_bits=8), split),
                 (qz.BinaryQuantizer(num_bits=16, sub_bits=5), None)):
    out = out or q(bits)
    np.testing.assert_array_equal(q.decode(out.codes), out.values)
  assert float(split.metrics["bits_per_token"]) == 16.0


# --- Gaussian quantile ----------------------------------------------------------------------


@pytest.mark.parametrize("centres", ["mean", "median"])
def test_gaussian_quantile_bins_monotone_and_round_trip(centres):
  edges, mids = qz.gaussian_quantile_bins(16, centres)
  n = statistics.NormalDist()
  assert np.all(np.diff(edges) > 0) and np.all(np.diff(mids) > 0)
  assert np.all(mids[:-1] < edges) and np.all(edges < mids[1:])    # each centre inside its bin
  np.testing.assert_allclose([n.cdf(e) for e in edges], np.arange(1, 16) / 16, atol=1e-12)
  if centres == "mean":
    # Truncated-normal mean of bin [a, b], checked by quadrature.
    xs = np.linspace(edges[6], edges[7], 20001)
    pdf = np.exp(-xs ** 2 / 2)
    np.testing.assert_allclose(mids[7], np.trapezoid(xs * pdf, xs) / np.trapezoid(pdf, xs),
                               rtol=1e-6)
  gq = qz.GaussianQuantile(dim=3, bins=16, centres=centres)
  codes = jnp.asarray(np.random.default_rng(15).integers(0, 16, (40, 3)), jnp.int32)
  centre_values = gq.decode(codes)
  out = gq(centre_values)
  np.testing.assert_array_equal(out.codes, codes)
  np.testing.assert_array_equal(out.values, centre_values)
  z = jnp.sort(_z((1000,), seed=16)).reshape(-1, 1) * jnp.ones(3)
  zc = gq(z).codes
  assert np.all(np.diff(np.asarray(zc[:, 0])) >= 0)                # codes monotone in z
  assert float(gq(z).metrics["perplexity"]) > 15.0                 # equal-mass bins on N(0, 1)


# --- metrics and jit ------------------------------------------------------------------------


def test_code_metrics_on_hand_built_distributions():
  m = qz.code_metrics(jnp.asarray([0, 0, 1, 1])[:, None], 4, 2.0)
  np.testing.assert_allclose([m["usage"], m["perplexity"], m["bits_per_token"]], [0.5, 2.0, 2.0])
  m = qz.code_metrics(jnp.asarray([3, 3, 3, 1])[:, None], 8, 3.0)
  h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  np.testing.assert_allclose([m["usage"], m["perplexity"]], [0.25, math.exp(h)], rtol=1e-6)
  m = qz.code_metrics(jnp.asarray([[0, 0], [1, 0], [2, 0], [3, 0]]), 4, 4.0)   # two streams
  np.testing.assert_allclose([m["usage"], m["perplexity"]], [(1.0 + 0.25) / 2, (4.0 + 1.0) / 2],
                             rtol=1e-6)


def test_everything_jits():
  z = _z((2, 3, 4), seed=17)
  vq = qz.VectorQuantizer(codebook_size=8, dim=4, dead_after=1)
  variables = vq.init(jax.random.key(0), z)
  train = jax.jit(lambda v, x, r: vq.apply(v, x, train=True, mutable=["vq_stats"],
                                           rngs={"quantizer": r}))
  out, upd = train(variables, z, jax.random.key(1))
  assert out.codes.shape == (2, 3) and out.values.shape == z.shape
  eager = vq.apply(variables, z)
  np.testing.assert_array_equal(out.codes, eager.codes)
  for q in (qz.FSQ(levels=(4, 4, 3, 3)), qz.LFQ(dim=4), qz.GaussianQuantile(dim=4, bins=8),
            qz.BinaryQuantizer(num_bits=4, sub_bits=2)):
    jitted = jax.jit(lambda x: q(x))(z)
    eager = q(z)
    np.testing.assert_array_equal(jitted.codes, eager.codes)
    np.testing.assert_array_equal(jitted.values, eager.values)
    assert set(jitted.metrics) >= {"usage", "perplexity", "bits_per_token"}
    assert float(jitted.metrics["bits_per_token"]) == pytest.approx(q.bits_per_token)
