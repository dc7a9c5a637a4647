"""ar_vision (tokenlab.methods.ar_vision): the three factorisations' invariants (exact
round trips, normalised likelihoods and the scale family's bound, causality per pixel and per
scale, samplers consistent with teacher forcing), the count-prior baseline and the
mini-reproduction's pipeline."""

import itertools
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.ar_vision import ArVision, ArVisionConfig, residual_levels
from tokenlab.repro.baselines import (best_position_count_prior, count_prior_bits,
                                      sample_count_prior)

# 2x2 images at 3 intensities: every image (81) and every pyramid can be enumerated.
SMALL = dict(image_size=2, levels=3, scales=(1, 2), num_classes=2, d_model=16, num_layers=1,
             num_heads=2)


class _BlockTokenizer:
  """A stand-in frozen tokenizer: one code per 2x2 block, its mean at 3 levels."""

  method = types.SimpleNamespace(grid=lambda hw: (hw[0] // 2, hw[1] // 2), codebook_size=3)

  def encode(self, images):
    b, h, w, _ = images.shape
    means = images.reshape(b, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return jnp.round(means * 2).astype(jnp.int32)

  def decode(self, codes):
    return jnp.repeat(jnp.repeat(codes[..., None] / 2.0, 2, axis=1), 2, axis=2)


def _method(family, **kw):
  cfg = ArVisionConfig(family=family, temperature=0.0, **{**SMALL, **kw})
  return ArVision(cfg, tokenizer=_BlockTokenizer() if family == "token" else None)


def _init(method, b=2):
  size = method.config.image_size
  batch = {"image": jnp.zeros((b, size, size, 1)), "label": jnp.zeros((b,), jnp.int32)}
  return nn.unbox(jax.jit(method.init)(jax.random.key(0), batch))


@pytest.fixture(scope="module")
def small():
  """{name: (method, params)}, greedy (temperature 0), initialised once: pixel and scale AR on
  2x2 images, scale AR on 4x4 images over scales 1, 2, 4 ("scale4")."""
  out = {}
  for name, family, kw in (("pixel", "pixel", {}), ("scale", "scale", {}),
                           ("scale4", "scale", dict(image_size=4, scales=(1, 2, 4)))):
    m = _method(family, **kw)
    out[name] = m, _init(m)
  return out


def _teacher_forced(m, params, labels):
  """jitted codes (B, length) -> logits (B, length, vocab) as in training."""
  return jax.jit(lambda c: m.module.apply({"params": params}, *m._inputs(c, labels)))


def _all_images(levels=3, size=2):
  grid = np.array(list(itertools.product(range(levels), repeat=size * size)), np.float32)
  return jnp.asarray(grid.reshape(-1, size, size, 1) / (levels - 1))


def test_tokens_round_trip_exactly_on_digits():
  from tokenlab.evals.image_samples import load_split
  x = jnp.asarray(load_split("digits", "validation")["image"][:32])
  for family in ("pixel", "scale"):
    m = ArVision(ArVisionConfig(family=family))
    codes, back = jax.jit(lambda x: (m.tokens(x), m.images(m.tokens(x))))(x)
    assert codes.shape == (32, 64 if family == "pixel" else 85)
    np.testing.assert_array_equal(back, x)      # exact: nearest upsampling, exact codebook
  table = residual_levels(17)
  assert len(table) == 33 and table[0] == -1 and table[16] == 0 and table[-1] == 1
  # The first scale is the image mean, quantized to a non-negative intensity.
  np.testing.assert_allclose(table[codes[:, 0]],
                             np.round(np.mean(x, axis=(1, 2, 3)) * 16) / 16)


def test_likelihoods_are_normalised_and_the_scale_nll_bounds_the_image(small):
  labels = jnp.zeros((81,), jnp.int32)
  images = _all_images()
  m, params = small["pixel"]
  p_pixel = jnp.exp(-jax.jit(m.nll)(params, jax.jit(m.tokens)(images), labels))
  np.testing.assert_allclose(float(jnp.sum(p_pixel)), 1.0, rtol=1e-4)   # 81 images, exact
  m, params = small["scale"]
  seqs = jnp.asarray(list(itertools.product(range(m.vocab), repeat=m.length)), jnp.int32)
  nll = jax.jit(m.nll)
  p_all = jnp.exp(-nll(params, seqs, jnp.zeros((len(seqs),), jnp.int32)))
  np.testing.assert_allclose(float(jnp.sum(p_all)), 1.0, rtol=1e-4)     # every pyramid
  # The scale NLL of an image is that of its own pyramid, one of the pyramids summing to the
  # image: p(pyramid(x)) <= p(x), so summed over all 81 images it stays below 1.
  canon = jax.jit(m.tokens)(images)
  index = np.asarray(canon) @ (m.vocab ** np.arange(m.length - 1, -1, -1))
  p_canon = jnp.exp(-nll(params, canon, labels))
  np.testing.assert_allclose(p_canon, p_all[index], rtol=1e-4)
  assert float(jnp.sum(p_canon)) < 0.99


def test_pixel_ar_is_causal_and_scale_ar_never_sees_its_own_scale(small):
  m, params = small["pixel"]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 3, (3, 2, 2, 1)) / 2.0, jnp.float32)
  labels = jnp.array([0, 1, 0])
  logits = _teacher_forced(m, params, labels)
  codes = jax.jit(m.tokens)(images)
  changed = codes.at[:, 2].set((codes[:, 2] + 1) % 3)
  a, b = logits(codes), logits(changed)
  assert float(jnp.max(jnp.abs(a[:, :3] - b[:, :3]))) < 1e-6    # outputs predicting 0..2
  assert float(jnp.max(jnp.abs(a[:, 3] - b[:, 3]))) > 1e-4
  # Scale: changing a scale-2 code (positions 1..4) leaves every prediction of scale 1 and 2.
  sm, sp = small["scale4"]
  x = jnp.asarray(rng.integers(0, 3, (3, 4, 4, 1)) / 2.0, jnp.float32)
  codes = jax.jit(sm.tokens)(x)
  logits = _teacher_forced(sm, sp, labels)
  changed = codes.at[:, 3].set((codes[:, 3] + 1) % sm.vocab)
  a, b = logits(codes), logits(changed)
  assert float(jnp.max(jnp.abs(a[:, :5] - b[:, :5]))) < 1e-6    # scales 1 and 2
  assert float(jnp.max(jnp.abs(a[:, 5:] - b[:, 5:]))) > 1e-4    # scale 3 reads it


def test_greedy_samplers_agree_with_teacher_forcing(small):
  """Greedy sampling = the argmax of the teacher-forced logits on its own output: the sampler
  (with its key/value cache) feeds the model what training fed it; for the scale family, one
  chunk per scale holding the running reconstruction down(f_hat_<k). The token family runs
  through a stand-in tokenizer (pixel and token share tokenlab/nn/image_ar.py's sampler,
  whose cache = recompute test is in test_image_generation.py)."""
  labels = jnp.array([0, 1, 1])
  token = _method("token", image_size=4)
  for m, params in (small["scale4"], (token, _init(token))):

    def draw(p, y, m=m):
      codes = m.sample_codes(p, y, jax.random.key(0))
      return codes, m.images(codes)

    codes, images = jax.jit(draw)(params, labels)
    assert codes.shape == (3, m.length) and int(codes.max()) < m.vocab
    logits = _teacher_forced(m, params, labels)(codes)
    np.testing.assert_array_equal(jnp.argmax(logits, -1), codes)
    assert images.shape == (3, m.config.image_size, m.config.image_size, 1)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_position_count_prior_learns_classes_and_is_tuned_on_validation():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  codes = np.where(rng.random((200, 6)) < 0.9, labels[:, None] * 3, 1)   # class y -> code 3y
  logp, bits = best_position_count_prior((codes[:150], labels[:150]),
                                         (codes[150:], labels[150:]), 4, 2)
  np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-9)
  assert bits < 6 * np.log2(4) / 2                  # far below uniform (12 bits)
  assert bits == pytest.approx(count_prior_bits(logp, codes[150:], labels[150:]))
  draws = sample_count_prior(logp, np.array([0] * 50 + [1] * 50), rng)
  assert np.mean(draws[:50] == 0) > 0.8 and np.mean(draws[50:] == 3) > 0.8


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import ar_vision as mod
  report = repro.run("ar_vision", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "ar_vision.png").exists()
  assert (tmp_path / "samples_pixel_ar.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  rows = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  assert rows[(mod.UNIFORM, mod.BPD)] == pytest.approx(np.log2(17))
  assert rows[(mod.COUNTS_PIX, mod.BPD)] < np.log2(17)
  assert rows[(mod.PIXEL, mod.IPS)] > 0
