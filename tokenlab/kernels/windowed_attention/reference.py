"""Windowed attention in plain jax.numpy: blocked, O(seq * window), the source of truth.

Both sequences are cut into blocks of `block` positions. Query block n sees key blocks
``n - a .. n + c`` (a = ceil(left / block), c = ceil(right / block)); those T = a + c + 1 key
blocks are laid side by side into a *band* of T * block keys by stacking T shifted views
of the blocked keys (no gather, never an N x N array). Each query block then does one dense
(block x T*block) masked attention. Blocks are batched: a `lax.map` walks chunks of about
CHUNK_ROWS query positions and each step is one batched matmul over the chunk's blocks, which
on CPU beats a loop over single blocks by a wide margin and keeps each step's logits in cache.

Compiled temporary memory is O(seq * heads * head_dim) plus one chunk's logits, linear in
seq. The backward pass is a custom VJP that saves only the output and the log-sum-exp and
recomputes the probabilities chunk by chunk (as flash attention does); dk and dv come back
from the band by summing the T shifted views into a scan carry.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.kernels.windowed_attention import _common
from tokenlab.kernels.windowed_attention._common import MASK_VALUE, Problem

# Query positions per step of the loop over chunks: the step's logits (heads x rows x band)
# then stay within a few MiB, i.e. in cache on a CPU.
CHUNK_ROWS = 512


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
                       block: int | None = None, chunk_rows: int = CHUNK_ROWS,
                       extra_mask=None) -> jax.Array:
  """Windowed attention, blocked reference.

  Args:
    q: (batch, seq, heads, head_dim).
    k, v: (batch, seq, kv_heads, head_dim); kv_heads divides heads.
    window: (left, right): query i sees key j iff i - left <= j <= i + right.
    segment_ids: optional (batch, seq) ints; a query sees only keys of its own segment.
    scale: logit scale, default 1/sqrt(head_dim).
    block: block size (positions); default from `default_block`.
    chunk_rows: query positions per step of the loop over chunks (memory vs. loop overhead).
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
  geo = _geometry(prob, block, chunk_rows)
  return _attention(q, k, v, segment_ids, prob, geo, extra_mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, segment_ids, prob: Problem, geo, extra_mask):
  out, _ = _forward(q, k, v, segment_ids, prob, geo, extra_mask)
  return out.astype(q.dtype)


def _attention_fwd(q, k, v, segment_ids, prob, geo, extra_mask):
  out, lse = _forward(q, k, v, segment_ids, prob, geo, extra_mask)
  # out is kept in float32: delta = rowsum(out * dout) in the backward pass needs it exact.
  return out.astype(q.dtype), (q, k, v, segment_ids, out, lse)


def _attention_bwd(prob, geo, extra_mask, res, dout):
  q, k, v, segment_ids, out, lse = res
  dq, dk, dv = _backward(q, k, v, segment_ids, out, lse, dout, prob, geo, extra_mask)
  seg_ct = None if segment_ids is None else np.zeros(segment_ids.shape, jax.dtypes.float0)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), seg_ct


_attention.defvjp(_attention_fwd, _attention_bwd)


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Static band geometry of one call."""
  block: int  # positions per block (queries and keys alike)
  nb: int  # blocks covering seq
  a: int  # key blocks before a query block's own block that it may see
  c: int  # key blocks after it
  chunk: int  # query blocks per step of the loop over chunks
  n_chunks: int

  @property
  def t_count(self) -> int:
    return self.a + self.c + 1

  @property
  def nb_q(self) -> int:  # query blocks, padded to whole chunks
    return self.n_chunks * self.chunk

  @property
  def nb_k(self) -> int:  # key blocks, with a before and c after the padded query blocks
    return self.a + self.nb_q + self.c


def _geometry(prob: Problem, block: int, chunk_rows: int = CHUNK_ROWS) -> _Geometry:
  if block < 1:
    raise _common.WindowedAttentionError(f"block={block}; pass a block size >= 1")
  nb = _common.cdiv(prob.seq, block)
  # Blocks beyond the sequence are all padding; never gather more than exist.
  a = min(_common.cdiv(prob.left, block), nb - 1)
  c = min(_common.cdiv(prob.right, block), nb - 1)
  chunk = max(1, min(nb, chunk_rows // block))
  return _Geometry(block, nb, a, c, chunk, _common.cdiv(nb, chunk))


def _q_chunks(x, prob: Problem, geo: _Geometry):
  """(b, seq, heads, d) -> (n_chunks, b, kv_heads, chunk, groups*block, d) float32."""
  b, s, h, d = x.shape
  g = h // prob.kv_heads
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, geo.nb_q * geo.block - s), (0, 0), (0, 0)))
  x = x.reshape(b, geo.n_chunks, geo.chunk, geo.block, prob.kv_heads, g, d)
  x = x.transpose(1, 0, 4, 2, 5, 3, 6)  # nc, b, K, chunk, g, block, d
  return x.reshape(geo.n_chunks, b, prob.kv_heads, geo.chunk, g * geo.block, d)


def _from_q_chunks(x, prob: Problem, geo: _Geometry, heads: int):
  """Inverse of _q_chunks: -> (b, seq, heads, d)."""
  nc, b, kh, _, _, d = x.shape
  g = heads // kh
  x = x.reshape(nc, b, kh, geo.chunk, g, geo.block, d).transpose(1, 0, 3, 5, 2, 4, 6)
  return x.reshape(b, nc * geo.chunk * geo.block, heads, d)[:, :prob.seq]


def _kv_blocks(x, prob: Problem, geo: _Geometry):
  """(b, seq, kv_heads, d) -> (b, kv_heads, nb_k, block, d) float32, a blocks of zeros first."""
  b, s, kh, d = x.shape
  bl = geo.block
  x = jnp.pad(x.astype(jnp.float32), ((0, 0), (geo.a * bl, geo.nb_k * bl - s - geo.a * bl),
                                      (0, 0), (0, 0)))
  return x.reshape(b, geo.nb_k, bl, kh, d).transpose(0, 3, 1, 2, 4)


def _from_kv_blocks(x, prob: Problem, geo: _Geometry):
  b, kh, _, bl, d = x.shape
  x = x[:, :, geo.a:geo.a + geo.nb].transpose(0, 2, 3, 1, 4)
  return x.reshape(b, geo.nb * bl, kh, d)[:, :prob.seq]


def _band(x, geo: _Geometry):
  """(b, K, chunk+a+c, block, ...) -> (b, K, chunk, T*block, ...).

  Query block n of the chunk gets key blocks n .. n+a+c of the slice, i.e. its own block
  and a before and c after it: T shifted views stacked side by side.
  """
  views = [x[:, :, t:t + geo.chunk] for t in range(geo.t_count)]
  x = jnp.stack(views, axis=3)  # b, K, chunk, T, block, ...
  return x.reshape(x.shape[:3] + (-1,) + x.shape[5:])


def _unband(x, geo: _Geometry):
  """Adjoint of _band: (b, K, chunk, T*block, ...) -> (b, K, chunk+a+c, block, ...)."""
  x = x.reshape(x.shape[:3] + (geo.t_count, geo.block) + x.shape[4:])
  total = None
  for t in range(geo.t_count):
    pad = [(0, 0)] * (x.ndim - 1)
    pad[2] = (t, geo.t_count - 1 - t)
    part = jnp.pad(x[:, :, :, t], pad)
    total = part if total is None else total + part
  return total


def _chunk_mask(ci, seg_blocks, prob: Problem, geo: _Geometry, extra_mask):
  """Mask broadcastable to one chunk's logits (b, K, chunk, groups*block, T*block)."""
  bl, g = geo.block, prob.groups
  # Query offset r in its block and band column j = t*block + s: the key lies
  # (t - a)*block + s - r after the query, whatever the block index, so the window test is
  # one static (block, T*block) pattern.
  rows = np.arange(bl)
  cols = np.arange(geo.t_count * bl)
  diff = (cols[None, :] - geo.a * bl) - rows[:, None]
  win = np.tile((diff >= -prob.left) & (diff <= prob.right), (g, 1))  # (g*block, T*block)
  # Keys before 0 or from seq on (padding) are invisible.
  q_block = ci * geo.chunk + jnp.arange(geo.chunk, dtype=jnp.int32)  # (chunk,)
  key_pos = (q_block[:, None] - geo.a) * bl + jnp.asarray(cols, jnp.int32)[None, :]
  valid = (key_pos >= 0) & (key_pos < prob.seq)  # (chunk, T*block)
  mask = jnp.asarray(win)[None] & valid[:, None, :]  # (chunk, g*block, T*block)
  if extra_mask is not None:
    q_pos = q_block[:, None] * bl + jnp.asarray(np.tile(rows, g), jnp.int32)[None, :]
    mask = mask & extra_mask(q_pos[:, :, None], key_pos[:, None, :])
  mask = mask[None, None]
  if seg_blocks is not None:
    seg = jax.lax.dynamic_slice_in_dim(seg_blocks, ci * geo.chunk, geo.chunk + geo.a + geo.c,
                                       axis=1)  # (b, chunk+a+c, block)
    seg_k = _band(seg[:, None], geo)[:, 0]  # (b, chunk, T*block)
    seg_q = jnp.tile(seg[:, geo.a:geo.a + geo.chunk], (1, 1, g))  # (b, chunk, g*block)
    mask = mask & (seg_q[:, None, :, :, None] == seg_k[:, None, :, None, :])
  return mask


def _seg_blocks(segment_ids, geo: _Geometry):
  if segment_ids is None:
    return None
  s = segment_ids.shape[1]
  bl = geo.block
  seg = jnp.pad(segment_ids, ((0, 0), (geo.a * bl, geo.nb_k * bl - s - geo.a * bl)),
                constant_values=-1)
  return seg.reshape(seg.shape[0], geo.nb_k, bl)


def _chunk_logits(ci, qc, kb, seg_blocks, prob, geo, extra_mask):
  """Masked logits of chunk ci and its key band: ((b,K,chunk,gB,TB), (b,K,chunk,TB,d))."""
  span = geo.chunk + geo.a + geo.c
  kband = _band(jax.lax.dynamic_slice_in_dim(kb, ci * geo.chunk, span, axis=2), geo)
  s = jnp.einsum("zknqd,zkntd->zknqt", qc, kband)
  mask = _chunk_mask(ci, seg_blocks, prob, geo, extra_mask)
  return jnp.where(mask, s, MASK_VALUE), kband


def _forward(q, k, v, segment_ids, prob, geo, extra_mask):
  qs = _q_chunks(q, prob, geo) * prob.scale
  kb = _kv_blocks(k, prob, geo)
  vb = _kv_blocks(v, prob, geo)
  seg_blocks = _seg_blocks(segment_ids, geo)
  span = geo.chunk + geo.a + geo.c

  def step(args):
    ci, qc = args
    s, _ = _chunk_logits(ci, qc, kb, seg_blocks, prob, geo, extra_mask)
    vband = _band(jax.lax.dynamic_slice_in_dim(vb, ci * geo.chunk, span, axis=2), geo)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    # Every real query sees at least itself, so l >= 1 there; a row of padding may see
    # nothing, and then l counts masked entries (exp(0) = 1 each): finite garbage, sliced off.
    l = jnp.sum(p, axis=-1, keepdims=True)
    o = jnp.einsum("zknqt,zkntd->zknqd", p, vband) / l
    return o, (m + jnp.log(l))[..., 0]

  # A loop over chunks of query blocks keeps each step's logits cache-sized and the compiled
  # temporary memory at O(seq * d) instead of O(seq * band).
  o, lse = jax.lax.map(step, (jnp.arange(geo.n_chunks, dtype=jnp.int32), qs))
  return _from_q_chunks(o, prob, geo, prob.heads), lse


def _backward(q, k, v, segment_ids, out, lse, dout, prob, geo, extra_mask):
  qs = _q_chunks(q, prob, geo) * prob.scale
  kb = _kv_blocks(k, prob, geo)
  vb = _kv_blocks(v, prob, geo)
  do = _q_chunks(dout, prob, geo)
  delta = jnp.sum(_q_chunks(out, prob, geo) * do, axis=-1)  # rowsum(p * dp)
  seg_blocks = _seg_blocks(segment_ids, geo)
  span = geo.chunk + geo.a + geo.c

  def step(carry, args):
    dk_acc, dv_acc = carry
    ci, qc, doc, deltac, lsec = args
    s, kband = _chunk_logits(ci, qc, kb, seg_blocks, prob, geo, extra_mask)
    vband = _band(jax.lax.dynamic_slice_in_dim(vb, ci * geo.chunk, span, axis=2), geo)
    # Masked logits are MASK_VALUE, so exp(s - lse) is exactly 0 there.
    p = jnp.exp(s - lsec[..., None])
    dp = jnp.einsum("zknqd,zkntd->zknqt", doc, vband)
    ds = p * (dp - deltac[..., None])
    dq = jnp.einsum("zknqt,zkntd->zknqd", ds, kband) * prob.scale
    dk = _unband(jnp.einsum("zknqt,zknqd->zkntd", ds, qc), geo)  # qc carries the scale
    dv = _unband(jnp.einsum("zknqt,zknqd->zkntd", p, doc), geo)
    start = ci * geo.chunk
    dk_acc = jax.lax.dynamic_update_slice_in_dim(
        dk_acc, jax.lax.dynamic_slice_in_dim(dk_acc, start, span, axis=2) + dk, start, axis=2)
    dv_acc = jax.lax.dynamic_update_slice_in_dim(
        dv_acc, jax.lax.dynamic_slice_in_dim(dv_acc, start, span, axis=2) + dv, start, axis=2)
    return (dk_acc, dv_acc), dq

  init = (jnp.zeros_like(kb), jnp.zeros_like(vb))
  xs = (jnp.arange(geo.n_chunks, dtype=jnp.int32), qs, do, delta, lse)
  (dk, dv), dq = jax.lax.scan(step, init, xs)
  return (_from_q_chunks(dq, prob, geo, prob.heads), _from_kv_blocks(dk, prob, geo),
          _from_kv_blocks(dv, prob, geo))


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
