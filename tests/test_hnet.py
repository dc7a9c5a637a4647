"""H-Net (dynamic chunking): the paper's checks, causality, STE, shapes, repro --quick."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tokenlab.methods.hnet import HNet, HNetConfig
from tokenlab.nn import dynamic_chunking as dc

TINY = HNetConfig(d_model=32, num_heads=2, main_layers=1, window=8, max_chunks=1.0)


def _batch(length=48, bsz=2, seed=0, docs=False):
  tok = jax.random.randint(jax.random.key(seed), (bsz, length), 0, 256, dtype=jnp.int32)
  pos = np.tile(np.arange(length, dtype=np.int32), (bsz, 1))
  seg = np.ones((bsz, length), np.int32)
  if docs:  # two packed documents in row 0, padding at the end of row 1
    pos[0, 20:] = np.arange(length - 20)
    seg[0, 20:] = 2
    seg[1, 40:] = 0
  return dict(inputs=tok, targets=jnp.roll(tok, -1, 1), positions=jnp.asarray(pos),
              segment_ids=jnp.asarray(seg), loss_mask=jnp.asarray(seg > 0, jnp.float32),
              target_bytes=jnp.ones((bsz, length), jnp.int32))


@functools.lru_cache(maxsize=None)
def _method(stages=1, target_ratio=(4.0,), smoothing=True):
  """(method, params, jitted apply), built once per configuration."""
  m = HNet(dataclasses.replace(TINY, stages=stages, target_ratio=target_ratio,
                               smoothing=smoothing))
  params = meta.unbox(jax.jit(m.init)(jax.random.key(1), _batch()))
  return m, params, jax.jit(m.apply)


def test_ratio_loss_minimum_is_one_at_target():
  n = 5.0
  b = jnp.zeros((1, 100), bool).at[0, ::5].set(True)  # F = 1/N
  p = jnp.full((1, 100), 1 / n)                          # G = 1/N
  loss, f, g = dc.ratio_loss(b, p, n)
  np.testing.assert_allclose([loss, f, g], [1.0, 0.2, 0.2], rtol=1e-6)
  # Along F = G = x the loss is N/(N-1)((N-1)x^2 + (1-x)^2): minimum 1 at x = 1/N.
  xs = np.linspace(0.01, 0.99, 99)
  vals = n / (n - 1) * ((n - 1) * xs ** 2 + (1 - xs) ** 2)
  assert abs(xs[np.argmin(vals)] - 1 / n) < 0.011 and vals.min() >= 1.0 - 1e-9


def test_dechunk_of_chunk_is_identity_when_every_p_is_one():
  x = jax.random.normal(jax.random.key(0), (2, 16, 8))
  p = jnp.ones((2, 16))
  b = dc.boundaries(p)
  pos = jnp.broadcast_to(jnp.arange(16), (2, 16))
  ch = dc.chunk(x, b, p, pos, jnp.ones((2, 16), jnp.int32), 16)
  chex.assert_trees_all_close(dc.dechunk(ch.x, ch.p, ch.group_ids), x, atol=1e-3)
  # Exact without the clamp-induced leak: no smoothing.
  chex.assert_trees_all_close(dc.dechunk(ch.x, ch.p, ch.group_ids, smoothing=False), x)


def test_chunk_keeps_boundary_vectors_and_group_ids():
  x = jnp.arange(8, dtype=jnp.float32)[None, :, None] * jnp.ones((1, 1, 3))
  b = jnp.array([[1, 0, 0, 1, 1, 0, 0, 0]], bool)
  p = jnp.where(b, 0.9, 0.1)
  ch = dc.chunk(x, b, p, jnp.arange(8)[None], jnp.ones((1, 8), jnp.int32), 4)
  np.testing.assert_array_equal(ch.group_ids, [[0, 0, 0, 1, 2, 2, 2, 2]])
  np.testing.assert_allclose(ch.x[0, :, 0], [0, 3, 4, 0])      # first byte of each chunk
  np.testing.assert_array_equal(ch.counts, [[3, 1, 4, 0]])
  np.testing.assert_array_equal(ch.valid, [[True, True, True, False]])
  np.testing.assert_allclose(ch.p[:, :3], [[0.9, 0.9, 0.9]])
  # EMA: zbar_j = p_j z_j + (1 - p_j) zbar_{j-1}
  z = jnp.array([[[1.0], [2.0], [4.0]]])
  pz = jnp.array([[0.5, 0.25, 1.0]])
  np.testing.assert_allclose(dc.ema(z, pz)[0, :, 0], [0.5, 0.875, 4.0], rtol=1e-6)


def test_more_chunks_than_slots_is_reported_not_an_error():
  x = jnp.ones((1, 8, 2))
  b = jnp.ones((1, 8), bool)
  ch = dc.chunk(x, b, jnp.ones((1, 8)), jnp.arange(8)[None], jnp.ones((1, 8), jnp.int32), 4)
  np.testing.assert_array_equal(ch.group_ids, [list(range(8))])
  out = dc.dechunk(ch.x, ch.p, ch.group_ids, smoothing=False)
  np.testing.assert_allclose(out[0, :, 0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_ste_forward_is_one_and_gradient_is_identity():
  c = jnp.array([0.3, 0.8])
  np.testing.assert_array_equal(dc.ste_ones(c), [1.0, 1.0])
  g = jax.grad(lambda c: jnp.sum(dc.ste_ones(c) * jnp.array([2.0, 3.0])))(c)
  np.testing.assert_allclose(g, [2.0, 3.0])


def test_boundary_probs_follow_cosine():
  q = jnp.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, -1.0]]])
  p = dc.boundary_probs(q, q, jnp.zeros((1, 4), bool))
  np.testing.assert_allclose(p, [[1.0, 0.5, 0.0, 1.0]], atol=1e-6)
  np.testing.assert_array_equal(dc.boundaries(p), [[True, False, False, True]])


@pytest.mark.parametrize("stages,smoothing", [(1, True), (2, True), (1, False)])
def test_causal_and_shapes(stages, smoothing):
  ratio = (4.0,) if stages == 1 else (2.0, 2.0)
  _, params, apply = _method(stages, ratio, smoothing)
  batch = _batch(docs=True)
  logits, stats = apply(params, batch)
  chex.assert_shape(logits, (2, 48, 256))
  assert len(stats) == stages
  # Changing byte j never changes logits before j (boundaries and chunks included).
  for j in (5, 21, 33):
    changed = dict(batch, inputs=batch["inputs"].at[:, j].set((batch["inputs"][:, j] + 91) % 256))
    logits2, _ = apply(params, changed)
    np.testing.assert_array_equal(np.asarray(logits[:, :j]), np.asarray(logits2[:, :j]))
    assert np.abs(np.asarray(logits[:, j:] - logits2[:, j:])).max() > 0


def test_packed_documents_do_not_see_each_other():
  _, params, apply = _method()
  batch = _batch(docs=True)
  logits, _ = apply(params, batch)
  earlier = dict(batch, inputs=batch["inputs"].at[0, :20].set(7))
  logits2, _ = apply(params, earlier)
  np.testing.assert_allclose(logits[0, 20:], logits2[0, 20:], atol=1e-5)


def test_loss_metrics_router_gradients_and_sampling():
  m, params, apply = _method()
  batch = _batch(docs=True)
  (loss, metrics), g = jax.jit(jax.value_and_grad(m.loss, has_aux=True))(params, batch, None)
  assert np.isfinite(loss)
  for key in ("bits_per_byte", "compression_ratio", "ratio_loss", "stage1/chunk_overflow"):
    assert key in metrics
  assert float(metrics["compression_ratio"].value()) >= 1.0
  assert float(jnp.abs(g["stage_0"]["q_proj"]["kernel"]).sum()) > 0
  plain = _batch()  # positions = arange, one segment: what sample() assumes
  prompt = plain["inputs"]
  out = m.sample(params, prompt, jnp.array([40, 44]), jax.random.key(0), temperature=0.0)
  chex.assert_shape(out, prompt.shape)
  np.testing.assert_array_equal(out[0, :40], prompt[0, :40])
  # Greedy sampling is the model's own argmax continuation.
  logits, _ = apply(params, dict(plain, inputs=out))
  np.testing.assert_array_equal(out[0, 40:], jnp.argmax(logits[0, 39:-1], -1))
  assert m.flops_per_byte(48) < m.flops_per_token(48)  # padded slots cost more than N


def test_repro_quick(tmp_path):
  import json
  from tokenlab import repro
  from tokenlab.repro import hnet as hnet_repro
  report = repro.run("hnet", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  for name in ("repro.md", "repro.json", "hnet_summary.png", "hnet_boundaries.png"):
    assert (tmp_path / name).exists(), name
  data = json.loads((tmp_path / "repro.json").read_text())
  assert [c["name"] for c in data["checks"]] == [c.name for c in hnet_repro.CHECKS]
  assert set(data["baselines"]) == {"count n-gram", "untrained hnet"}
  rows = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  # The baselines were measured: the n-gram beats uniform, the untrained net has boundaries.
  assert rows[("count n-gram", "eval bits/byte")] < rows[("uniform", "eval bits/byte")]
  assert 0 < rows[("untrained hnet", "boundary rate, all bytes")] < 1
