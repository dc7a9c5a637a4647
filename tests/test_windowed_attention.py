"""Windowed attention: the jnp reference, the public API, neighborhood attention, errors.

The Pallas kernels (interpret mode) are tested in test_windowed_attention_pallas.py.
"""

from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_windowed_attention_oracle import attention_and_grads, dense_mask, rel_err
from tokenlab.errors import TokenlabError
from tokenlab.kernels import neighborhood_attention_2d, windowed_attention
from tokenlab.kernels.windowed_attention import _common, reference

F32_TOL = 1e-5
BF16_TOL = 2e-2


def _inputs(seed, b, n, h, kh, d, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, n, h, d))
  k, v = rng.normal(size=(2, b, n, kh, d))
  dout = rng.normal(size=(b, n, h, d))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v, dout))


def _run(fn, q, k, v, dout):
  """Output and (dq, dk, dv) of sum(fn(q, k, v) * dout), in one jit."""
  def f(q, k, v, dout):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(dout.astype(out.dtype))
  return jax.jit(f)(q, k, v, dout)


def _check(fn, q, k, v, dout, *, left, right, seg=None, tol=F32_TOL, extra=None):
  out, grads = _run(fn, q, k, v, dout)
  chex.assert_shape(out, q.shape)
  assert out.dtype == q.dtype
  f64 = [np.asarray(x.astype(jnp.float32), np.float64) for x in (q, k, v, dout)]
  mask = dense_mask(q.shape[1], left, right, seg, extra)
  want, want_grads = attention_and_grads(*f64, mask)
  errs = [rel_err(out.astype(jnp.float32), want)]
  errs += [rel_err(g.astype(jnp.float32), w) for g, w in zip(grads, want_grads)]
  assert max(errs) < tol, f"rel errors out,dq,dk,dv = {errs}"
  return errs


# Shapes: (batch, seq, heads, kv_heads, head_dim, (left, right), block, chunk_rows, segments).
# Blocks and chunks are small so that seq is not a multiple of the block, several chunks run,
# and the band is cut at both sequence ends.
REF_CASES = [
    (2, 37, 4, 2, 8, (5, 0), 8, 16, True),
    (1, 64, 2, 1, 16, (0, 0), 16, 32, False),
    (1, 50, 3, 3, 8, (100, 3), 16, 16, True),  # window larger than seq
    (1, 33, 2, 2, 8, (1, 1), 8, 8, False),
    (2, 40, 4, 1, 8, (7, 9), None, 512, True),  # default block
    (1, 45, 2, 2, 4, (0, 13), 8, 24, False),  # anti-causal
    (1, 29, 2, 1, 8, (3, 0), 32, 512, True),  # block larger than seq
    (1, 70, 2, 2, 8, (31, 31), 16, 32, True),
    (1, 26, 2, 2, 8, (0, 0), 8, 8, True),
]


@pytest.mark.parametrize("case", REF_CASES, ids=lambda c: f"n{c[1]}w{c[5]}b{c[6]}s{c[8]:d}")
def test_reference_matches_float64(case):
  b, n, h, kh, d, (left, right), block, chunk_rows, with_seg = case
  q, k, v, dout = _inputs(n + left, b, n, h, kh, d)
  seg = None
  if with_seg:
    # Unsorted ids too: the semantics is "same id", not "contiguous run".
    seg = np.random.default_rng(n).integers(0, 3, size=(b, n)).astype(np.int32)
  fn = lambda q, k, v: reference.windowed_attention(  # noqa: E731
      q, k, v, window=(left, right), segment_ids=None if seg is None else jnp.asarray(seg),
      block=block, chunk_rows=chunk_rows)
  _check(fn, q, k, v, dout, left=left, right=right, seg=seg)


@pytest.mark.parametrize("window", [(4, 0), (3, 6)])
def test_reference_bf16(window):
  q, k, v, dout = _inputs(1, 2, 41, 4, 2, 16, jnp.bfloat16)
  seg = np.repeat(np.array([[0, 1, 2]]), [15, 20, 6], axis=1).repeat(2, 0).astype(np.int32)
  fn = lambda q, k, v: windowed_attention(  # noqa: E731
      q, k, v, window=window, segment_ids=jnp.asarray(seg), implementation="reference")
  _check(fn, q, k, v, dout, left=window[0], right=window[1], seg=seg, tol=BF16_TOL)


@pytest.mark.parametrize("window", [(5, 0), (200, 3)])
def test_matches_jax_nn_local_window(window):
  q, k, v, dout = _inputs(2, 2, 48, 4, 2, 16)
  seg = np.random.default_rng(3).integers(0, 2, size=(2, 48))
  mask = jnp.asarray(seg[:, None, :, None] == seg[:, None, None, :])

  def peer(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, local_window_size=window)

  def ours(q, k, v):
    return windowed_attention(q, k, v, window=window, segment_ids=jnp.asarray(seg))

  out, grads = _run(ours, q, k, v, dout)
  want, want_grads = _run(peer, q, k, v, dout)
  for a, b in zip((out, *grads), (want, *want_grads)):
    assert rel_err(a, b) < F32_TOL


def test_int_window_means_symmetric():
  q, k, v, _ = _inputs(4, 1, 20, 2, 2, 8)
  f = jax.jit(lambda q, k, v, w: windowed_attention(q, k, v, window=w), static_argnums=3)
  chex.assert_trees_all_close(f(q, k, v, 3), f(q, k, v, (3, 3)))


def test_default_implementation_on_cpu_is_reference():
  q, k, v, _ = _inputs(5, 1, 24, 2, 1, 8)
  got = jax.jit(lambda q, k, v: windowed_attention(q, k, v, window=(4, 0)))(q, k, v)
  want = jax.jit(lambda q, k, v: windowed_attention(
      q, k, v, window=(4, 0), implementation="reference"))(q, k, v)
  # Exact on purpose: if the default is the reference, both functions trace to the same
  # program (one program compared with itself); a tolerance would not tell them apart.
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_scale_argument():
  q, k, v, dout = _inputs(6, 1, 30, 2, 2, 8)
  fn = lambda q, k, v: windowed_attention(q, k, v, window=(4, 2), scale=0.7)  # noqa: E731
  out, _ = _run(fn, q, k, v, dout)
  want, _ = attention_and_grads(q, k, v, dout, dense_mask(30, 4, 2), scale=0.7)
  assert rel_err(out, want) < F32_TOL


def test_band_blocks_brute_force():
  # For every outer block: all visible inner blocks lie in [lo, hi), [full_lo, full_hi) holds
  # only blocks where every pair is visible and inside seq, and the static band bound holds.
  for n, bo, bi, before, after in itertools.product([7, 33], [4, 16], [4, 8], [0, 5, 100],
                                                   [0, 3]):
    for o in range(_common.cdiv(n, bo)):
      lo, full_lo, full_hi, hi = _common.band_blocks(o, bo, bi, n, before, after)
      assert lo <= full_lo <= full_hi <= hi
      assert hi - lo <= _common.max_band(bo, bi, before, after, _common.cdiv(n, bi))
      rows = np.arange(o * bo, o * bo + bo)[:, None]
      for blk in range(_common.cdiv(n, bi)):
        cols = np.arange(blk * bi, blk * bi + bi)[None, :]
        see = (cols >= rows - before) & (cols <= rows + after) & (cols < n)
        if (see & (rows < n)).any():
          assert lo <= blk < hi
        if full_lo <= blk < full_hi:
          assert see.all()


def _temp_bytes(n, window=(16, 0), grad=False):
  x = jax.ShapeDtypeStruct((1, n, 2, 16), jnp.float32)

  def f(q, k, v):
    return jnp.sum(reference.windowed_attention(q, k, v, window=window, block=16,
                                                chunk_rows=64))

  f = jax.grad(f, argnums=(0, 1, 2)) if grad else f
  return jax.jit(f).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("grad", [False, True])
def test_reference_temp_memory_is_linear(grad):
  # An N x N intermediate would multiply the temporary memory by 4 when seq doubles; the
  # blocked reference's grows by at most ~2x (+ slack for fixed-size buffers).
  small, big = _temp_bytes(512, grad=grad), _temp_bytes(1024, grad=grad)
  assert big <= 2.2 * small + 65536, (small, big)
  # And below one float32 N x N matrix per head (2 heads here).
  assert big < 1024 * 1024 * 4


# ----------------------------------------------------------------- neighborhood attention


def _neighborhood_mask(height, width, radius, shape):
  y, x = np.divmod(np.arange(height * width), width)
  dy = y[None, :] - y[:, None]
  dx = x[None, :] - x[:, None]
  if shape == "circle":
    return dy * dy + dx * dx < radius * radius
  return np.maximum(np.abs(dy), np.abs(dx)) <= radius


@pytest.mark.parametrize("height,width,radius,shape", [
    (5, 7, 2, "circle"), (6, 4, 1, "square"), (3, 3, 0, "square"), (5, 6, 2.5, "circle")])
def test_neighborhood_attention_2d(height, width, radius, shape):
  n = height * width
  q, k, v, dout = _inputs(7, 2, n, 2, 1, 8)
  fn = lambda q, k, v: neighborhood_attention_2d(  # noqa: E731
      q, k, v, height=height, width=width, radius=radius, shape=shape)
  extra = _neighborhood_mask(height, width, radius, shape)
  # The oracle's 1-D window is the whole sequence: only the 2-D mask restricts it.
  _check(fn, q, k, v, dout, left=n, right=n, extra=extra)


def test_neighborhood_does_not_wrap_rows():
  # Token at the end of row 0 must not see the start of row 1 with radius 1 (square): their
  # raster distance is 1, but dx = -(width - 1).
  height, width = 3, 5
  mask = _neighborhood_mask(height, width, 1, "square")
  assert not mask[width - 1, width]
  q, k, v, dout = _inputs(8, 1, height * width, 1, 1, 4)
  fn = lambda q, k, v: neighborhood_attention_2d(  # noqa: E731
      q, k, v, height=height, width=width, radius=1, shape="square")
  _check(fn, q, k, v, dout, left=99, right=99, extra=mask)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=(-1, 0)), "negative"),
    (dict(window=(1, 2, 3)), "window="),
    (dict(window="big"), "window="),
    (dict(window=(2, 0), implementation="cuda"), "implementation="),
    (dict(window=(2, 0), segment_ids=jnp.zeros((2, 5), jnp.int32)), "segment_ids"),
    (dict(window=(2, 0), segment_ids=jnp.zeros((1, 16), jnp.float32)), "integer"),
])
def test_bad_arguments_raise(kwargs, match):
  q, k, v, _ = _inputs(9, 1, 16, 4, 2, 8)
  with pytest.raises(TokenlabError, match=match):
    windowed_attention(q, k, v, **kwargs)


def test_bad_shapes_raise():
  q, k, v, _ = _inputs(10, 1, 16, 4, 2, 8)
  with pytest.raises(TokenlabError, match="divide"):
    windowed_attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2),
                       window=(1, 0))
  with pytest.raises(TokenlabError, match="batch, seq"):
    windowed_attention(q, k[:, :8], v[:, :8], window=(1, 0))
  with pytest.raises(TokenlabError, match="batch, seq, heads, head_dim"):
    windowed_attention(q[0], k, v, window=(1, 0))
  with pytest.raises(TokenlabError, match="dtype"):
    windowed_attention(q, k.astype(jnp.bfloat16), v, window=(1, 0))
  with pytest.raises(TokenlabError, match="height\\*width"):
    neighborhood_attention_2d(q, k, v, height=3, width=3, radius=1)
  with pytest.raises(TokenlabError, match="radius"):
    neighborhood_attention_2d(q, k, v, height=4, width=4, radius=0, shape="circle")
  with pytest.raises(TokenlabError, match="shape="):
    neighborhood_attention_2d(q, k, v, height=4, width=4, radius=1, shape="diamond")
