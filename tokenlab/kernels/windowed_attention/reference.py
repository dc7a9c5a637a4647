"""Windowed attention in plain jax.numpy: blocked, O(seq * window), the source of truth.

Both sequences are cut into blocks of `block` positions. Query block n sees key blocks
``n - a .. n + c`` (a = ceil(left / block), c = ceil(right / block)); those T = a + c + 1 key
blocks are gathered side by side into a *band* of T * block keys by stacking T shifted views
of the blocked keys (no gather, no N x N array). Each query block then does one dense
(block x T*block) attention with a mask, which is vectorised over all blocks at once: on CPU
one large batched matmul beats a loop over blocks by a wide margin.

Memory is O(seq * T * block * heads), linear in seq. The backward pass is a custom VJP that
recomputes the probabilities from the saved log-sum-exp (as flash attention does), so autodiff
does not keep the (seq x T*block) probabilities of every block alive as residuals beyond
what the recompute needs; dk and dv come back from the band by summing the T shifted views.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.kernels.windowed_attention import _common
from tokenlab.kernels.windowed_attention._common import MASK_VALUE, Problem


def default_block(left: int, right: int, seq: int) -> int:
  """Block size that keeps the band tight without making blocks tiny.

  Wasted work per query block is about one block on each partial side, so a block near half
  the window wastes ~25-40%; below 32 the per-block overhead of the batched matmul dominates
  on CPU.
  """
  width = left + right + 1
  block = 32
  while block < 128 and block * 3 < width:
    block *= 2
  # Never larger than the (8-rounded) sequence: a block of mostly padding is pure waste.
  return max(8, min(block, _common.cdiv(seq, 8) * 8))


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window=(0, 0),
                       segment_ids: jax.Array | None = None, scale: float | None = None,
                       block: int | None = None, extra_mask=None) -> jax.Array:
  """Windowed attention, blocked reference.

  Args:
    q: (batch, seq, heads, head_dim).
    k, v: (batch, seq, kv_heads, head_dim); kv_heads divides heads.
    window: (left, right): query i sees key j iff i - left <= j <= i + right.
    segment_ids: optional (batch, seq) ints; a query sees only keys of its own segment.
    scale: logit scale, default 1/sqrt(head_dim).
    block: block size (positions); default from `default_block`.
    extra_mask: optional static callable (q_pos, k_pos) -> bool array applied on top of the
      window (both int32 arrays that broadcast); used by neighborhood_attention_2d. It must be
      True on the diagonal so that every query sees at least itself.

  Returns:
    (batch, seq, heads, head_dim) in q's dtype; softmax and accumulation in float32.
  """
  prob = _common.check_inputs(q, k, v, window, segment_ids, scale)
  if block is None:
    block = default_block(prob.left, prob.right, prob.seq)
  if segment_ids is not None:
    segment_ids = segment_ids.astype(jnp.int32)
  return _attention(q, k, v, segment_ids, prob, block, extra_mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, segment_ids, prob: Problem, block: int, extra_mask):
  out, _ = _forward(q, k, v, segment_ids, prob, block, extra_mask)
  return out.astype(q.dtype)


def _attention_fwd(q, k, v, segment_ids, prob, block, extra_mask):
  out, lse = _forward(q, k, v, segment_ids, prob, block, extra_mask)
  # out is kept in float32: delta = rowsum(out * dout) in the backward pass needs it exact.
  return out.astype(q.dtype), (q, k, v, segment_ids, out, lse)


def _attention_bwd(prob, block, extra_mask, res, dout):
  q, k, v, segment_ids, out, lse = res
  dq, dk, dv = _backward(q, k, v, segment_ids, out, lse, dout, prob, block, extra_mask)
  seg_ct = None if segment_ids is None else np.zeros(segment_ids.shape, jax.dtypes.float0)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), seg_ct


_attention.defvjp(_attention_fwd, _attention_bwd)


def _layout(prob: Problem, block: int):
  """Static band geometry: (n_blocks, padded seq, a, c, T)."""
  nb = _common.cdiv(prob.seq, block)
  # Blocks beyond the sequence are all padding; never gather more than exist.
  a = min(_common.cdiv(prob.left, block), nb - 1)
  c = min(_common.cdiv(prob.right, block), nb - 1)
  return nb, nb * block, a, c, a + c + 1


def _to_blocks_q(x, prob, block, nb, n_pad):
  """(b, seq, heads, d) -> (b, kv_heads, nb, groups*block, d) float32."""
  b, s, h, d = x.shape
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, n_pad - s), (0, 0), (0, 0)))
  x = x.reshape(b, nb, block, prob.kv_heads, prob.groups, d)
  x = x.transpose(0, 3, 1, 4, 2, 5)  # b, K, nb, g, block, d
  return x.reshape(b, prob.kv_heads, nb, prob.groups * block, d)


def _from_blocks_q(x, prob, block, nb):
  """Inverse of _to_blocks_q: -> (b, seq, heads, d)."""
  b, kh, _, _, d = x.shape
  x = x.reshape(b, kh, nb, prob.groups, block, d).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b, nb * block, kh * prob.groups, d)[:, :prob.seq]


def _band(x, a, c, nb):
  """(b, K, nb, block, ...) -> (b, K, nb, T*block, ...): block n gets blocks n-a .. n+c."""
  pad = [(0, 0)] * x.ndim
  pad[2] = (a, c)
  xp = jnp.pad(x, pad)
  views = [xp[:, :, t:t + nb] for t in range(a + c + 1)]
  x = jnp.stack(views, axis=3)  # b, K, nb, T, block, ...
  return x.reshape(x.shape[:3] + (-1,) + x.shape[5:])


def _unband(x, a, c, nb, block):
  """Adjoint of _band: (b, K, nb, T*block, ...) -> (b, K, nb, block, ...), summing views."""
  t_count = a + c + 1
  x = x.reshape(x.shape[:3] + (t_count, block) + x.shape[4:])
  total = None
  for t in range(t_count):
    # View t of query block n is key block n - a + t, i.e. row n + t of the padded array.
    pad = [(0, 0)] * (x.ndim - 1)
    pad[2] = (t, a + c - t)
    part = jnp.pad(x[:, :, :, t], pad)
    total = part if total is None else total + part
  return total[:, :, a:a + nb]


def _mask(segment_ids, prob: Problem, block, nb, n_pad, a, t_count, extra_mask):
  """Boolean mask broadcastable to the logits (b, K, nb, groups*block, T*block)."""
  # Query offset r in its block, band column t*block + s -> key offset (t - a)*block + s - r
  # from the query: the window test does not depend on the block index.
  rows = np.arange(block)
  cols = np.arange(t_count * block)
  diff = (cols[None, :] - a * block) - rows[:, None]
  win = (diff >= -prob.left) & (diff <= prob.right)  # (block, T*block)
  # Keys before 0 or past seq (padding) are invisible.
  key_pos = (np.arange(nb)[:, None] - a) * block + cols[None, :]  # (nb, T*block)
  valid = (key_pos >= 0) & (key_pos < prob.seq)
  mask = jnp.asarray(win)[None, :, :] & jnp.asarray(valid)[:, None, :]  # (nb, block, T*block)
  if extra_mask is not None:
    q_pos = (np.arange(nb)[:, None] * block + rows[None, :])[:, :, None]
    mask = mask & extra_mask(jnp.asarray(q_pos, jnp.int32), jnp.asarray(key_pos, jnp.int32)[:, None, :])
  mask = jnp.tile(mask, (1, prob.groups, 1))[None, None]  # (1, 1, nb, g*block, T*block)
  if segment_ids is not None:
    seg = jnp.pad(segment_ids, ((0, 0), (0, n_pad - prob.seq)), constant_values=-1)
    seg = seg.reshape(-1, 1, nb, block)
    seg_k = _band(seg[..., None], a, t_count - 1 - a, nb)[..., 0]  # (b, 1, nb, T*block)
    seg_q = jnp.tile(seg, (1, 1, 1, prob.groups))  # (b, 1, nb, g*block)
    mask = mask & (seg_q[..., :, None] == seg_k[..., None, :])
  return mask


def _logits(q, k, segment_ids, prob, block, extra_mask):
  nb, n_pad, a, c, t_count = _layout(prob, block)
  qb = _to_blocks_q(q, prob, block, nb, n_pad) * prob.scale
  kb = _to_blocks_q(k, dataclasses.replace(prob, heads=prob.kv_heads), block, nb, n_pad)
  kband = _band(kb, a, c, nb)
  s = jnp.einsum("zknqd,zkntd->zknqt", qb, kband)
  mask = _mask(segment_ids, prob, block, nb, n_pad, a, t_count, extra_mask)
  return qb, kband, jnp.where(mask, s, MASK_VALUE), mask


def _forward(q, k, v, segment_ids, prob, block, extra_mask):
  nb, n_pad, a, c, _ = _layout(prob, block)
  kv_prob = dataclasses.replace(prob, heads=prob.kv_heads)
  _, _, s, _ = _logits(q, k, segment_ids, prob, block, extra_mask)
  vband = _band(_to_blocks_q(v, kv_prob, block, nb, n_pad), a, c, nb)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - m)
  # Every real query sees at least itself, so l >= 1 there; rows of padding may see nothing,
  # and then l counts masked entries (exp(0) = 1 each): finite garbage that is sliced off.
  l = jnp.sum(p, axis=-1, keepdims=True)
  o = jnp.einsum("zknqt,zkntd->zknqd", p, vband) / l
  lse = (m + jnp.log(l))[..., 0]  # (b, K, nb, g*block)
  return _from_blocks_q(o, prob, block, nb), lse


def _backward(q, k, v, segment_ids, out, lse, dout, prob, block, extra_mask):
  nb, n_pad, a, c, _ = _layout(prob, block)
  kv_prob = dataclasses.replace(prob, heads=prob.kv_heads)
  qb, kband, s, _ = _logits(q, k, segment_ids, prob, block, extra_mask)
  vband = _band(_to_blocks_q(v, kv_prob, block, nb, n_pad), a, c, nb)
  # Masked logits are MASK_VALUE, so exp(s - lse) is exactly 0 there.
  p = jnp.exp(s - lse[..., None])
  do = _to_blocks_q(dout, prob, block, nb, n_pad)
  ob = _to_blocks_q(out, prob, block, nb, n_pad)
  delta = jnp.sum(ob * do, axis=-1)  # (b, K, nb, g*block) = rowsum(p * dp)
  dp = jnp.einsum("zknqd,zkntd->zknqt", do, vband)
  ds = p * (dp - delta[..., None])
  dq = jnp.einsum("zknqt,zkntd->zknqd", ds, kband) * prob.scale
  dk_band = jnp.einsum("zknqt,zknqd->zkntd", ds, qb)  # qb already carries the scale
  dv_band = jnp.einsum("zknqt,zknqd->zkntd", p, do)
  dk = _unband(dk_band, a, c, nb, block)
  dv = _unband(dv_band, a, c, nb, block)
  dk = _from_blocks_q(dk, kv_prob, block, nb)
  dv = _from_blocks_q(dv, kv_prob, block, nb)
  return _from_blocks_q(dq, prob, block, nb), dk, dv


def dense_reference(q, k, v, *, window, segment_ids=None, scale=None, extra_mask=None,
                    dtype=jnp.float32):
  """O(seq^2) masked softmax attention, for tests only (pass dtype=float64 under x64)."""
  prob = _common.check_inputs(q, k, v, window, segment_ids, scale)
  g = prob.groups
  qf, kf, vf = (x.astype(dtype) for x in (q, k, v))
  kf = jnp.repeat(kf, g, axis=2)
  vf = jnp.repeat(vf, g, axis=2)
  s = jnp.einsum("bqhd,bkhd->bhqk", qf, kf) * prob.scale
  pos = jnp.arange(prob.seq)
  mask = _common.window_mask(pos[:, None], pos[None, :], prob.left, prob.right, prob.seq)
  if extra_mask is not None:
    mask = mask & extra_mask(pos[:, None], pos[None, :])
  mask = mask[None, None]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  s = jnp.where(mask, s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", p, vf)
