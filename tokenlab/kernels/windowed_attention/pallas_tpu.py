"""Windowed attention as Pallas TPU (Mosaic) kernels, forward and backward.

TPU kernels are pipelined by the grid: each grid step gets one block of every operand in VMEM,
DMA'd ahead by Pallas. So the band is a grid axis: grid (batch, heads, query block, band step),
and the key/value index maps point band step j of query block i at key block
``min(lo(i) + j, hi(i) - 1)``. Steps past the band's end repeat the last block index, which
Pallas does not fetch again, and the kernel skips their compute. Band steps on full blocks
run without computing or applying a mask; partial blocks (band ends, sequence padding) apply
it. Accumulators live in VMEM scratch across the band axis ("arbitrary" semantics); the
output block is written on the last band step.

Backward: a dq kernel over the same band, and a dk/dv kernel over the transposed band whose
grid also walks the query heads of a kv group, so grouped-query attention accumulates dk/dv
in VMEM instead of materialising per-query-head gradients.

Lowering: Mosaic TPU (`pltpu.CompilerParams`), the only TPU lowering Pallas has. Operands are
laid out (batch, heads, seq, head_dim) so that blocks are (rows, head_dim) tiles; per-row
vectors (lse, delta, segment ids) are passed as (.., rows, 1) columns or (.., 1, rows) rows so
they broadcast without transposes in the kernel. `interpret=True` runs it on CPU for tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tokenlab.kernels.windowed_attention import _common
from tokenlab.kernels.windowed_attention import _pallas_util
from tokenlab.kernels.windowed_attention._common import MASK_VALUE, Problem
from tokenlab.kernels.windowed_attention._pallas_util import dot as _dot, dot_t as _dot_t


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes. On a real TPU use multiples of 128 (key blocks are the lane dimension of
  the logits tile); interpret mode accepts any multiple of 8."""
  block_q: int = 128
  block_k: int = 128
  block_q_dkv: int = 128
  block_k_dkv: int = 128

  def check(self) -> None:
    for name, b in dataclasses.asdict(self).items():
      if b < 8 or b % 8:
        raise _common.WindowedAttentionError(f"{name}={b}; pass a multiple of 8")


@dataclasses.dataclass(frozen=True)
class _Config:
  prob: Problem
  blocks: BlockSizes
  n_pad: int
  interpret: bool
  poison: bool
  # Static (q_pos, k_pos) -> bool test applied on top of the window in every tile (full
  # ones too), e.g. `_common.NeighborhoodMask`; None for plain windowed attention.
  extra_mask: Any = None


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window,
                       segment_ids: jax.Array | None = None, scale: float | None = None,
                       block_sizes: BlockSizes | None = None, interpret: bool = False,
                       poison: bool = False, extra_mask: Any = None) -> jax.Array:
  """Windowed attention with the Pallas TPU kernels; shapes as the public function.

  Args:
    q: (batch, seq, heads, head_dim); k, v: (batch, seq, kv_heads, head_dim).
    window: (left, right) (or an int w for (w, w)).
    segment_ids: optional (batch, seq) ints.
    scale: logit scale, default 1/sqrt(head_dim).
    block_sizes: tile sizes; they shrink to the (8-rounded) seq when it is shorter.
    interpret: run the kernels in the Pallas interpreter (CPU tests).
    poison: start every output buffer as NaN (tests: proves every row is written).
    extra_mask: optional static, hashable (q_pos, k_pos) -> bool (int32 positions that
      broadcast) applied on top of the window, e.g. `_common.NeighborhoodMask` for 2-D
      neighborhood attention; it must be True on the diagonal. Tiles the window marks full
      are then masked as well.

  Returns:
    (batch, seq, heads, head_dim) in q's dtype.
  """
  prob = _common.check_inputs(q, k, v, window, segment_ids, scale)
  blocks = block_sizes or BlockSizes()
  blocks.check()
  cap = _common.cdiv(prob.seq, 8) * 8
  sizes = [min(b, cap) for b in dataclasses.astuple(blocks)]
  blocks = BlockSizes(*sizes)
  n_pad = _common.cdiv(prob.seq, int(np.lcm.reduce(sizes))) * int(np.lcm.reduce(sizes))
  cfg = _Config(prob, blocks, n_pad, bool(interpret), bool(poison), extra_mask)
  if segment_ids is not None:
    segment_ids = _pallas_util.pad_axis(segment_ids.astype(jnp.int32), 1, n_pad, -1)
  return _attention(q, k, v, segment_ids, cfg)


def _to_heads_major(x: jax.Array, cfg: _Config) -> jax.Array:
  """(b, seq, heads, d) -> (b, heads, n_pad, d)."""
  return _pallas_util.pad_axis(x.transpose(0, 2, 1, 3), 2, cfg.n_pad)


def _seg_views(seg):
  """Segment ids as a column (b, n, 1) and a row (b, 1, n) for broadcasting in tiles."""
  return seg[:, :, None], seg[:, None, :]


def _params(*semantics: str):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def _band_index(outer, outer_block, inner_block, before, after, prob: Problem, step,
                clamp: bool):
  """Inner block of band step `step`, and the band bounds (lo, full_lo, full_hi, hi).

  Index maps clamp the block to the band's last one (a repeated block index is not fetched
  again); kernels take it unclamped, so that steps past the band (>= hi) do nothing.
  """
  lo, full_lo, full_hi, hi = _common.band_blocks(outer, outer_block, inner_block, prob.seq,
                                                 before, after)
  block = lo + step
  if clamp:
    block = jnp.minimum(block, hi - 1)
  return block, (lo, full_lo, full_hi, hi)


def _tile_mask(row_pos, col_pos, row_seg, col_seg, prob: Problem, windowed: bool,
               rows_are_queries: bool, extra=None):
  """Mask of a (rows, cols) tile from (rows, 1) and (1, cols) positions, or None."""
  mask = None
  if windowed:
    if rows_are_queries:
      mask = _common.window_mask(row_pos, col_pos, prob.left, prob.right, prob.seq)
    else:
      mask = _common.window_mask(col_pos, row_pos, prob.left, prob.right, prob.seq)
      # Rows here are keys; a partial tile may also hold queries of padding.
      mask = mask & (col_pos < prob.seq)
  if row_seg is not None:
    same = row_seg == col_seg
    mask = same if mask is None else mask & same
  if extra is not None:
    # Applied in full tiles too: "full" refers to the 1-D window only.
    inside = extra(row_pos, col_pos) if rows_are_queries else extra(col_pos, row_pos)
    mask = inside if mask is None else mask & inside
  return mask


def _run_band_step(kb, bounds, compute):
  """Runs compute(windowed) for band block kb: unmasked if full, masked if partial."""
  lo, full_lo, full_hi, hi = bounds
  del lo
  full = (kb >= full_lo) & (kb < full_hi)
  pl.when(full)(lambda: compute(False))
  pl.when(jnp.logical_not(full) & (kb < hi))(lambda: compute(True))


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(*refs, cfg: _Config, has_seg: bool, n_band: int):
  if has_seg:
    q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  prob, bq, bk = cfg.prob, cfg.blocks.block_q, cfg.blocks.block_k
  i, j = pl.program_id(2), pl.program_id(3)
  kb, bounds = _band_index(i, bq, bk, prob.left, prob.right, prob, j, clamp=False)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  def compute(windowed: bool):
    s = _dot_t(q_ref[...], k_ref[...]) * prob.scale  # (bq, bk)
    q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    k_pos = kb * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    mask = _tile_mask(q_pos, k_pos, qseg_ref[...] if has_seg else None,
                      kseg_ref[...] if has_seg else None, prob, windowed, True,
                      cfg.extra_mask)
    if mask is not None:
      s = jnp.where(mask, s, MASK_VALUE)
    m_prev = m_ref[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_new)
    p = jnp.exp(s - m_new)
    if mask is not None:
      # A row with nothing visible yet has m_new = MASK_VALUE, where exp(s - m_new) = 1.
      p = jnp.where(mask, p, 0.0)
    l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
    v = v_ref[...]
    acc_ref[...] = acc_ref[...] * alpha + _dot(p.astype(v.dtype), v)
    m_ref[...] = m_new

  _run_band_step(kb, bounds, compute)

  @pl.when(j == n_band - 1)
  def _write():
    l = l_ref[...]
    # Only rows of padding can see nothing (l = 0); they get 0 and a finite lse.
    seen = l > 0.0
    l = jnp.where(seen, l, 1.0)
    o_ref[...] = (acc_ref[...] / l).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m_ref[...] + jnp.log(l), 0.0)


def _forward(q, k, v, seg, cfg: _Config):
  prob, bq, bk = cfg.prob, cfg.blocks.block_q, cfg.blocks.block_k
  g, n, d = prob.groups, cfg.n_pad, prob.head_dim
  qh, kh, vh = (_to_heads_major(x, cfg) for x in (q, k, v))
  n_band = _common.max_band(bq, bk, prob.left, prob.right, n // bk)

  def kv_map(z, h, i, j):
    kb, _ = _band_index(i, bq, bk, prob.left, prob.right, prob, j, clamp=True)
    return z, _common.div(h, g), kb, 0

  in_specs = [pl.BlockSpec((None, None, bq, d), lambda z, h, i, j: (z, h, i, 0)),
              pl.BlockSpec((None, None, bk, d), kv_map),
              pl.BlockSpec((None, None, bk, d), kv_map)]
  args = [qh, kh, vh]
  if seg is not None:
    col, row = _seg_views(seg)
    in_specs += [pl.BlockSpec((None, bq, 1), lambda z, h, i, j: (z, i, 0)),
                 pl.BlockSpec((None, 1, bk), lambda z, h, i, j: (z, 0, kv_map(z, h, i, j)[2]))]
    args += [col, row]
  out, lse = _pallas_util.call(
      functools.partial(_fwd_kernel, cfg=cfg, has_seg=seg is not None, n_band=n_band),
      args=args,
      out_shape=[jax.ShapeDtypeStruct(qh.shape, q.dtype),
                 jax.ShapeDtypeStruct((prob.batch, prob.heads, n, 1), jnp.float32)],
      out_specs=[pl.BlockSpec((None, None, bq, d), lambda z, h, i, j: (z, h, i, 0)),
                 pl.BlockSpec((None, None, bq, 1), lambda z, h, i, j: (z, h, i, 0))],
      poison=cfg.poison,
      in_specs=in_specs,
      grid=(prob.batch, prob.heads, n // bq, n_band),
      scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)],
      compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
      interpret=cfg.interpret,
      name="windowed_attention_fwd",
  )
  return out, lse


# ---------------------------------------------------------------------------- backward


def _dq_kernel(*refs, cfg: _Config, has_seg: bool, n_band: int):
  if has_seg:
    (q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, qseg_ref, kseg_ref, dq_ref,
     acc_ref) = refs
  else:
    q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dq_ref, acc_ref = refs
  prob, bq, bk = cfg.prob, cfg.blocks.block_q, cfg.blocks.block_k
  i, j = pl.program_id(2), pl.program_id(3)
  kb, bounds = _band_index(i, bq, bk, prob.left, prob.right, prob, j, clamp=False)

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  def compute(windowed: bool):
    k = k_ref[...]
    p = jnp.exp(_dot_t(q_ref[...], k) * prob.scale - lse_ref[...])
    q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    k_pos = kb * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    mask = _tile_mask(q_pos, k_pos, qseg_ref[...] if has_seg else None,
                      kseg_ref[...] if has_seg else None, prob, windowed, True,
                      cfg.extra_mask)
    if mask is not None:
      p = jnp.where(mask, p, 0.0)
    ds = p * (_dot_t(do_ref[...], v_ref[...]) - delta_ref[...])
    acc_ref[...] += _dot(ds.astype(k.dtype), k)

  _run_band_step(kb, bounds, compute)

  @pl.when(j == n_band - 1)
  def _write():
    dq_ref[...] = (acc_ref[...] * prob.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg: _Config, has_seg: bool, n_band: int):
  if has_seg:
    (k_ref, v_ref, q_ref, do_ref, lse_ref, delta_ref, kseg_ref, qseg_ref, dk_ref, dv_ref,
     dk_acc, dv_acc) = refs
  else:
    k_ref, v_ref, q_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_acc, dv_acc = refs
  prob, bq, bk = cfg.prob, cfg.blocks.block_q_dkv, cfg.blocks.block_k_dkv
  jk, gi, t = pl.program_id(2), pl.program_id(3), pl.program_id(4)
  # Key j is seen by queries j - right .. j + left: the band with the sides swapped.
  qb, bounds = _band_index(jk, bk, bq, prob.right, prob.left, prob, t, clamp=False)

  @pl.when((gi == 0) & (t == 0))
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  def compute(windowed: bool):
    q, do = q_ref[...], do_ref[...]
    # Transposed tile: rows are keys, columns are queries; lse and delta come as rows.
    pt = jnp.exp(_dot_t(k_ref[...], q) * prob.scale - lse_ref[...])
    k_pos = jk * bk + jax.lax.broadcasted_iota(jnp.int32, (bk, 1), 0)
    q_pos = qb * bq + jax.lax.broadcasted_iota(jnp.int32, (1, bq), 1)
    mask = _tile_mask(k_pos, q_pos, kseg_ref[...] if has_seg else None,
                      qseg_ref[...] if has_seg else None, prob, windowed, False,
                      cfg.extra_mask)
    if mask is not None:
      pt = jnp.where(mask, pt, 0.0)
    dv_acc[...] += _dot(pt.astype(do.dtype), do)
    dst = pt * (_dot_t(v_ref[...], do) - delta_ref[...])
    dk_acc[...] += _dot(dst.astype(q.dtype), q)

  _run_band_step(qb, bounds, compute)

  @pl.when((gi == prob.groups - 1) & (t == n_band - 1))
  def _write():
    dk_ref[...] = (dk_acc[...] * prob.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _backward(q, k, v, seg, out, lse, dout, cfg: _Config):
  prob, blocks = cfg.prob, cfg.blocks
  g, n, d = prob.groups, cfg.n_pad, prob.head_dim
  qh, kh, vh, doh = (_to_heads_major(x, cfg) for x in (q, k, v, dout))
  # delta_i = sum_j p_ij dp_ij = <out_i, dout_i>: a cheap elementwise pass left to XLA.
  delta = jnp.sum(out.astype(jnp.float32) * doh.astype(jnp.float32), axis=-1, keepdims=True)
  has_seg = seg is not None
  if has_seg:
    col, row = _seg_views(seg)

  bq, bk = blocks.block_q, blocks.block_k
  n_band = _common.max_band(bq, bk, prob.left, prob.right, n // bk)

  def kv_map(z, h, i, j):
    kb, _ = _band_index(i, bq, bk, prob.left, prob.right, prob, j, clamp=True)
    return z, _common.div(h, g), kb, 0

  q_spec = pl.BlockSpec((None, None, bq, d), lambda z, h, i, j: (z, h, i, 0))
  col_spec = pl.BlockSpec((None, None, bq, 1), lambda z, h, i, j: (z, h, i, 0))
  in_specs = [q_spec, q_spec, col_spec, col_spec, pl.BlockSpec((None, None, bk, d), kv_map),
              pl.BlockSpec((None, None, bk, d), kv_map)]
  args = [qh, doh, lse, delta, kh, vh]
  if has_seg:
    in_specs += [pl.BlockSpec((None, bq, 1), lambda z, h, i, j: (z, i, 0)),
                 pl.BlockSpec((None, 1, bk), lambda z, h, i, j: (z, 0, kv_map(z, h, i, j)[2]))]
    args += [col, row]
  (dq,) = _pallas_util.call(
      functools.partial(_dq_kernel, cfg=cfg, has_seg=has_seg, n_band=n_band),
      args=args,
      out_shape=[jax.ShapeDtypeStruct(qh.shape, jnp.float32)],
      out_specs=[q_spec],
      poison=cfg.poison, in_specs=in_specs, grid=(prob.batch, prob.heads, n // bq, n_band),
      scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
      compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
      interpret=cfg.interpret, name="windowed_attention_dq")

  bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
  n_band = _common.max_band(bk, bq, prob.right, prob.left, n // bq)

  def q_map(z, kh_, jk, gi, t):
    qb, _ = _band_index(jk, bk, bq, prob.right, prob.left, prob, t, clamp=True)
    return z, kh_ * g + gi, qb, 0

  def row_map(z, kh_, jk, gi, t):
    # lse and delta as (b, heads, 1, n) rows: block (1, bq) at column block qb.
    z, h, qb, _ = q_map(z, kh_, jk, gi, t)
    return z, h, 0, qb

  k_spec = pl.BlockSpec((None, None, bk, d), lambda z, kh_, jk, gi, t: (z, kh_, jk, 0))
  row = pl.BlockSpec((None, None, 1, bq), row_map)
  in_specs = [k_spec, k_spec, pl.BlockSpec((None, None, bq, d), q_map),
              pl.BlockSpec((None, None, bq, d), q_map), row, row]
  args = [kh, vh, qh, doh, lse.transpose(0, 1, 3, 2), delta.transpose(0, 1, 3, 2)]
  if has_seg:
    in_specs += [pl.BlockSpec((None, bk, 1), lambda z, kh_, jk, gi, t: (z, jk, 0)),
                 pl.BlockSpec((None, 1, bq), lambda z, kh_, jk, gi, t: (z, 0, q_map(
                     z, kh_, jk, gi, t)[2]))]
    args += [col, seg[:, None, :]]
  kv_shape = jax.ShapeDtypeStruct(kh.shape, jnp.float32)
  dk, dv = _pallas_util.call(
      functools.partial(_dkv_kernel, cfg=cfg, has_seg=has_seg, n_band=n_band),
      args=args,
      out_shape=[kv_shape, kv_shape],
      out_specs=[k_spec, k_spec],
      poison=cfg.poison, in_specs=in_specs,
      grid=(prob.batch, prob.kv_heads, n // bk, g, n_band),
      scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
      compiler_params=_params("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
      interpret=cfg.interpret, name="windowed_attention_dkv")

  def back(x):
    return x[:, :, :prob.seq].transpose(0, 2, 1, 3)

  return back(dq), back(dk), back(dv)


# ------------------------------------------------------------------------------ vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, seg, cfg: _Config):
  out, _ = _forward(q, k, v, seg, cfg)
  return out[:, :, :cfg.prob.seq].transpose(0, 2, 1, 3)


def _attention_fwd(q, k, v, seg, cfg):
  out, lse = _forward(q, k, v, seg, cfg)
  return out[:, :, :cfg.prob.seq].transpose(0, 2, 1, 3), (q, k, v, seg, out, lse)


def _attention_bwd(cfg, res, dout):
  q, k, v, seg, out, lse = res
  dq, dk, dv = _backward(q, k, v, seg, out, lse, dout, cfg)
  seg_ct = None if seg is None else np.zeros(seg.shape, jax.dtypes.float0)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), seg_ct


_attention.defvjp(_attention_fwd, _attention_bwd)
