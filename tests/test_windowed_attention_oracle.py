"""Float64 numpy oracle for windowed attention tests: dense masked softmax and its gradient.

Written independently of the kernels (numpy, O(seq^2), float64), so a test compares every
implementation against exact arithmetic on the same inputs.
"""

from __future__ import annotations

import numpy as np


def dense_mask(seq: int, left: int, right: int, segment_ids=None, extra=None) -> np.ndarray:
  """(batch or 1, seq, seq) bool: query i sees key j."""
  i = np.arange(seq)[:, None]
  j = np.arange(seq)[None, :]
  mask = ((j >= i - left) & (j <= i + right))[None]
  if extra is not None:
    mask = mask & extra[None]
  if segment_ids is not None:
    seg = np.asarray(segment_ids)
    mask = mask & (seg[:, :, None] == seg[:, None, :])
  return mask


def attention_and_grads(q, k, v, dout, mask, scale=None):
  """Output and (dq, dk, dv) of sum(out * dout), all float64.

  q: (b, n, h, d); k, v: (b, n, kh, d); dout like q; mask: (b or 1, n, n).
  """
  q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
  b, n, h, d = q.shape
  g = h // k.shape[2]
  scale = 1.0 / np.sqrt(d) if scale is None else scale
  kr = np.repeat(k, g, axis=2)
  vr = np.repeat(v, g, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, kr) * scale
  s = np.where(mask[:, None], s, -np.inf)
  s = s - s.max(axis=-1, keepdims=True)
  p = np.exp(s)
  p = p / p.sum(axis=-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", p, vr)
  dv = np.einsum("bhqk,bqhd->bkhd", p, dout)
  dp = np.einsum("bqhd,bkhd->bhqk", dout, vr)
  ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kr) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale

  def group_sum(x):
    return x.reshape(b, n, k.shape[2], g, d).sum(axis=3)

  return out, (dq, group_sum(dk), group_sum(dv))


def rel_err(actual, expected) -> float:
  """||actual - expected|| / max(||expected||, 1), in float64.

  The floor of 1 only matters where the exact value is (near) zero, e.g. dq with window
  (0, 0), where softmax over a single key has zero gradient: then this is an absolute error.
  """
  a = np.asarray(actual, np.float64)
  e = np.asarray(expected, np.float64)
  return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1.0))


def test_oracle_gradient_matches_finite_differences():
  # The oracle's hand-written backward is itself checked, by central differences in float64.
  rng = np.random.default_rng(0)
  b, n, h, kh, d = 1, 7, 2, 1, 3
  q, dout = rng.normal(size=(2, b, n, h, d))
  k, v = rng.normal(size=(2, b, n, kh, d))
  seg = np.array([[0, 0, 0, 1, 1, 1, 1]])
  mask = dense_mask(n, 2, 1, seg)
  _, grads = attention_and_grads(q, k, v, dout, mask)
  eps = 1e-6
  for which, (x, gx) in enumerate(zip((q, k, v), grads)):
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      args = [q, k, v]
      plus, minus = x.copy(), x.copy()
      plus[idx] += eps
      minus[idx] -= eps
      args[which] = plus
      f_plus = (attention_and_grads(*args, dout, mask)[0] * dout).sum()
      args[which] = minus
      f_minus = (attention_and_grads(*args, dout, mask)[0] * dout).sum()
      num[idx] = (f_plus - f_minus) / (2 * eps)
    assert np.abs(num - gx).max() < 1e-7, which


def test_oracle_mask_semantics():
  m = dense_mask(5, 1, 2)[0]
  # Row 2 sees keys 1..4; row 0 sees 0..2.
  np.testing.assert_array_equal(m[2], [False, True, True, True, True])
  np.testing.assert_array_equal(m[0], [True, True, True, False, False])
