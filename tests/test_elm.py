"""ELM (tokenlab.methods.elm): vocabulary decomposition, the binary tokens' straight-through
gradient, normalised decomposed heads, causality, the samplers and the mini-reproduction."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.elm import (ELM, CodeIterator, ElmConfig, code_log_prob, joint_log_probs,
                                  random_mask)
from tokenlab.nn.image_ar import sample_image_tokens
from tokenlab.nn.quantizers import BinaryQuantizer, merge_codes, split_code

BITS, N, C = 6, 9, 3


def _method(objective="ar", sub_tokens=2):
  return ELM(ElmConfig(objective=objective, num_bits=BITS, sub_tokens=sub_tokens, num_tokens=N,
                       num_classes=C, d_model=16, num_layers=1, num_heads=2))


def _batch(seed=0, b=4):
  rng = np.random.default_rng(seed)
  return {"codes": jnp.asarray(rng.integers(0, 2 ** BITS, (b, N)), jnp.int32),
          "label": jnp.asarray(np.arange(b) % C, jnp.int32)}


@pytest.fixture(scope="module")
def models():
  """{(objective, G): (method, params)}, each initialised under jit once."""
  out = {}
  for key in (("ar", 2), ("ar", 1), ("mlm", 2)):
    m = _method(*key)
    out[key] = m, nn.unbox(jax.jit(m.init)(jax.random.key(0), _batch()))
  return out


def test_code_is_hi_times_2k_plus_lo_and_round_trips():
  codes = jnp.arange(2 ** 10, dtype=jnp.int32)
  sub = split_code(codes, 10, 5)
  np.testing.assert_array_equal(sub[:, 0] * 32 + sub[:, 1], codes)     # code = hi 2^k + lo
  np.testing.assert_array_equal(sub[:, 0], np.arange(1024) >> 5)
  np.testing.assert_array_equal(merge_codes(sub, 5), codes)
  # The quantizer's own decomposition agrees with split_code on every 10-bit pattern.
  bits = (np.arange(1024)[:, None] >> np.arange(10)) & 1
  q = BinaryQuantizer(10, sub_bits=5)
  np.testing.assert_array_equal(q.bits_to_codes(jnp.asarray(bits)), sub)
  np.testing.assert_array_equal(q.decode(sub), bits)


def test_binary_straight_through_gradient_is_nonzero_and_sigmoid_shaped():
  logits = jnp.linspace(-3, 3, 10)
  w = jnp.arange(1.0, 11.0)
  f = lambda z: jnp.sum(BinaryQuantizer(10)(z, train=True, rng=jax.random.key(0)).values * w)
  grad = jax.grad(f)(logits)
  assert bool(jnp.all(grad != 0))
  s = jax.nn.sigmoid(logits)
  np.testing.assert_allclose(grad, w * s * (1 - s), rtol=1e-5)
  values = BinaryQuantizer(10)(logits, train=True, rng=jax.random.key(0)).values
  assert set(np.unique(np.asarray(values))) <= {0.0, 1.0}          # forward: exact bits


def test_decomposed_heads_give_a_normalised_joint(models):
  rng = np.random.default_rng(1)
  logp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(5, 2, 8)), jnp.float32), -1)
  joint = joint_log_probs(logp)
  np.testing.assert_allclose(jax.nn.logsumexp(joint, -1), 0.0, atol=1e-5)
  codes = jnp.asarray(rng.integers(0, 64, 5), jnp.int32)
  want = logp[np.arange(5), 0, codes >> 3] + logp[np.arange(5), 1, codes & 7]
  np.testing.assert_allclose(joint[np.arange(5), codes], want, rtol=1e-6)
  np.testing.assert_allclose(code_log_prob(logp, codes, 6), want, rtol=1e-6)
  # The module's joint output (what the samplers read) is normalised over all 2^K codes.
  method, params = models[("ar", 2)]
  tokens = jnp.concatenate([jnp.full((4, 1), 2 ** BITS), _batch()["codes"]], 1)
  out = method.module.clone(joint=True).apply({"params": params}, tokens)
  assert out.shape == (4, N + 1, 2 ** BITS)
  np.testing.assert_allclose(jax.nn.logsumexp(out, -1), 0.0, atol=1e-4)


def test_ar_is_causal_and_mlm_sees_both_sides(models):
  codes = _batch()["codes"]
  changed = codes.at[:, 5].set((codes[:, 5] + 1) % 2 ** BITS)
  for key, causal in ((("ar", 2), True), (("mlm", 2), False)):
    method, params = models[key]
    f = jax.jit(lambda c: method.module.apply({"params": params}, c))
    a, b = f(codes), f(changed)
    before = float(jnp.max(jnp.abs(a[:, :5] - b[:, :5])))   # outputs at positions 0..4
    after = float(jnp.max(jnp.abs(a[:, 6:] - b[:, 6:])))
    assert after > 1e-4
    assert (before < 1e-6) if causal else (before > 1e-4), (key, before)


def test_random_mask_counts_and_nll_metrics(models):
  m = jnp.array([1, 4, 9, 3])
  mask = random_mask(jax.random.key(0), (4, N), m)
  np.testing.assert_array_equal(mask.sum(-1), m)
  batch = _batch()
  for key, (method, params) in models.items():
    metrics = jax.jit(method.eval_metrics)(params, batch, jax.random.key(3))
    bits = float(metrics["nll_bits_per_image"].value())
    # An initialised network is close to uniform: N * BITS = 54 bits per image.
    assert 40 < bits < 70, (key, bits)


def test_samplers_return_codes_and_ar_cache_matches_recompute(models):
  labels = jnp.array([0, 1, 2])
  for key in (("ar", 2), ("mlm", 2)):
    method, params = models[key]
    codes = jax.jit(method.sample_codes)(params, labels, jax.random.key(5))
    assert codes.shape == (3, N) and int(codes.min()) >= 0 and int(codes.max()) < 2 ** BITS
  method, params = models[("ar", 2)]
  joint = method.module.clone(joint=True)
  kw = dict(num_tokens=N, num_codes=2 ** BITS, num_classes=C, temperature=0.0)
  cached = sample_image_tokens(joint, params, labels, jax.random.key(1), cached=True, **kw)
  plain = sample_image_tokens(joint, params, labels, jax.random.key(1), cached=False, **kw)
  np.testing.assert_array_equal(cached, plain)


def test_code_iterator_covers_validation_once():
  codes = np.arange(10 * N).reshape(10, N)
  it = CodeIterator(codes, np.arange(10), 4, 0, train=False)
  batches = list(it)
  assert len(batches) == 3 and batches[-1]["mask"].tolist() == [1, 1, 0, 0]
  seen = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(10))


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import elm as mod
  report = repro.run("elm", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "elm.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  rows = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  assert rows[(mod.UNIFORM, mod.NLL)] == 490.0
  assert rows[(mod.COUNTS, mod.NLL)] < 490.0
