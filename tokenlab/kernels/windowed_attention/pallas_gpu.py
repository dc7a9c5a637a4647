"""Windowed attention as Pallas GPU kernels (Triton lowering), forward and backward.

Flash-attention style: one program per (query block, batch, head) keeps its query block in
registers/SRAM and walks only the band of key blocks it can see, with an online softmax. The
band is split into three loops: partial blocks at the low end, full blocks in the middle (no
mask is computed or applied there), partial blocks at the high end. The backward pass is two
kernels: dq walks the same band; dk/dv walks the transposed band (for a key block, the query
blocks that see it). With grouped-query attention dk/dv are computed per query head and
summed over each group outside the kernel.

Lowering: the Triton lowering, chosen explicitly with `pallas.triton.CompilerParams`. The
installed JAX defaults GPU Pallas to Mosaic GPU (whose `pl.pallas_call` path is deprecated in
favour of warpgroup-level `plgpu.kernel` code for Hopper/Blackwell); see BUILD_NOTES.md for
why this kernel uses Triton. Interpret mode (`interpret=True`) runs it on CPU for tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from tokenlab.kernels.windowed_attention import _common
from tokenlab.kernels.windowed_attention import _pallas_util
from tokenlab.kernels.windowed_attention._common import MASK_VALUE, Problem
from tokenlab.kernels.windowed_attention._pallas_util import dot as _dot, dot_t as _dot_t


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (powers of two; >= 16 on a real GPU, where tl.dot needs 16).

  block_q/block_k tile the forward and the dq kernel; block_q_dkv/block_k_dkv the dk/dv one.
  """
  block_q: int = 128
  block_k: int = 64
  block_q_dkv: int = 64
  block_k_dkv: int = 64

  def check(self) -> None:
    for name, b in dataclasses.asdict(self).items():
      if b < 1 or b & (b - 1):
        raise _common.WindowedAttentionError(f"{name}={b}; pass a power of two")


@dataclasses.dataclass(frozen=True)
class _Config:
  prob: Problem
  blocks: BlockSizes
  n_pad: int  # seq rounded up to every block size
  d_pad: int  # head_dim rounded up to a power of two >= 16
  interpret: bool
  poison: bool
  num_warps: int
  num_stages: int
  # Static (q_pos, k_pos) -> bool test applied on top of the window in every tile (full
  # ones too), e.g. `_common.NeighborhoodMask`; None for plain windowed attention.
  extra_mask: Any = None


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window,
                       segment_ids: jax.Array | None = None, scale: float | None = None,
                       block_sizes: BlockSizes | None = None, interpret: bool = False,
                       poison: bool = False, num_warps: int | None = None,
                       num_stages: int = 2, extra_mask: Any = None) -> jax.Array:
  """Windowed attention with the Pallas GPU kernels; shapes as the public function.

  Args:
    q: (batch, seq, heads, head_dim); k, v: (batch, seq, kv_heads, head_dim).
    window: (left, right) (or an int w for (w, w)).
    segment_ids: optional (batch, seq) ints.
    scale: logit scale, default 1/sqrt(head_dim).
    block_sizes: tile sizes; blocks larger than the (power-of-two rounded) seq shrink to it.
    interpret: run the kernels in the Pallas interpreter (CPU tests).
    poison: start every output buffer as NaN (tests: proves every row is written).
    num_warps, num_stages: Triton launch parameters (ignored when interpreting).
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
  # Tiles bigger than the sequence only add padding.
  cap = max(16, int(pl.next_power_of_2(prob.seq)))
  blocks = BlockSizes(*(min(b, cap) for b in dataclasses.astuple(blocks)))
  n_pad = _common.cdiv(prob.seq, max(dataclasses.astuple(blocks))) * max(
      dataclasses.astuple(blocks))
  d_pad = max(16, int(pl.next_power_of_2(prob.head_dim)))
  if num_warps is None:
    num_warps = 4 if d_pad <= 64 else 8
  cfg = _Config(prob, blocks, n_pad, d_pad, bool(interpret), bool(poison), num_warps,
                num_stages, extra_mask)
  if segment_ids is not None:
    segment_ids = _pallas_util.pad_axis(segment_ids.astype(jnp.int32), 1, n_pad, -1)
  return _attention(q, k, v, segment_ids, cfg)


def _pad(x: jax.Array, cfg: _Config) -> jax.Array:
  # Zero columns of q and k add nothing to a logit; zero columns of v give zero output
  # columns that are sliced off.
  return _pallas_util.pad_axis(_pallas_util.pad_axis(x, 1, cfg.n_pad), 3, cfg.d_pad)


def _params(cfg: _Config):
  return pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _split(refs, has_seg: bool, n_before_seg: int):
  refs = list(refs)
  if has_seg:
    return refs[:n_before_seg], refs[n_before_seg], refs[n_before_seg + 1:]
  return refs[:n_before_seg], None, refs[n_before_seg:]


def _mask(q_pos, k_pos, q_seg, k_seg, prob: Problem, windowed: bool, extra=None):
  """Mask for a (len(q_pos), len(k_pos)) tile, or None when the tile needs none."""
  mask = None
  if windowed:
    mask = _common.window_mask(q_pos[:, None], k_pos[None, :], prob.left, prob.right, prob.seq)
  if q_seg is not None:
    same = q_seg[:, None] == k_seg[None, :]
    mask = same if mask is None else mask & same
  if extra is not None:
    # Applied in full tiles too: "full" refers to the 1-D window only.
    inside = extra(q_pos[:, None], k_pos[None, :])
    mask = inside if mask is None else mask & inside
  return mask


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(*refs, cfg: _Config, has_seg: bool):
  (q_ref, k_ref, v_ref), seg_ref, (o_ref, lse_ref) = _split(refs, has_seg, 3)
  prob, bq, bk = cfg.prob, cfg.blocks.block_q, cfg.blocks.block_k
  i = pl.program_id(0)
  q = q_ref[...]
  q_pos = i * bq + jnp.arange(bq, dtype=jnp.int32)
  q_seg = seg_ref[pl.ds(i * bq, bq)] if has_seg else None
  lo, full_lo, full_hi, hi = _common.band_blocks(i, bq, bk, prob.seq, prob.left, prob.right)

  def step(kb, carry, windowed):
    acc, m, l = carry
    start = pl.multiple_of(kb * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s = _dot_t(q, k) * prob.scale
    k_seg = seg_ref[pl.ds(start, bk)] if has_seg else None
    mask = _mask(q_pos, start + jnp.arange(bk, dtype=jnp.int32), q_seg, k_seg, prob, windowed,
                 cfg.extra_mask)
    if mask is not None:
      s = jnp.where(mask, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    if mask is not None:
      # A row with nothing visible yet has m_new = MASK_VALUE, where exp(s - m_new) = 1.
      p = jnp.where(mask, p, 0.0)
    l = alpha * l + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, l

  carry = (jnp.zeros((bq, cfg.d_pad), jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32),
           jnp.zeros((bq,), jnp.float32))
  carry = jax.lax.fori_loop(lo, full_lo, functools.partial(step, windowed=True), carry)
  carry = jax.lax.fori_loop(full_lo, full_hi, functools.partial(step, windowed=False), carry)
  carry = jax.lax.fori_loop(full_hi, hi, functools.partial(step, windowed=True), carry)
  acc, m, l = carry
  # Only rows of padding can see nothing (l = 0); they get 0 and a finite lse.
  seen = l > 0.0
  l = jnp.where(seen, l, 1.0)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(l), 0.0)


def _forward(q, k, v, seg, cfg: _Config):
  prob, bq = cfg.prob, cfg.blocks.block_q
  g = prob.groups
  qp, kp, vp = _pad(q, cfg), _pad(k, cfg), _pad(v, cfg)
  has_seg = seg is not None
  n, dp = cfg.n_pad, cfg.d_pad
  in_specs = [
      pl.BlockSpec((None, bq, None, dp), lambda i, z, h: (z, i, h, 0)),
      pl.BlockSpec((None, n, None, dp), lambda i, z, h: (z, 0, _common.div(h, g), 0)),
      pl.BlockSpec((None, n, None, dp), lambda i, z, h: (z, 0, _common.div(h, g), 0)),
  ]
  args = [qp, kp, vp]
  if has_seg:
    in_specs.append(pl.BlockSpec((None, n), lambda i, z, h: (z, 0)))
    args.append(seg)
  out, lse = _pallas_util.call(
      functools.partial(_fwd_kernel, cfg=cfg, has_seg=has_seg),
      args=args,
      out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                 jax.ShapeDtypeStruct((prob.batch, prob.heads, n), jnp.float32)],
      out_specs=[pl.BlockSpec((None, bq, None, dp), lambda i, z, h: (z, i, h, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, z, h: (z, h, i))],
      poison=cfg.poison,
      in_specs=in_specs,
      grid=(n // bq, prob.batch, prob.heads),
      compiler_params=_params(cfg),
      interpret=cfg.interpret,
      name="windowed_attention_fwd",
  )
  return out, lse


# ---------------------------------------------------------------------------- backward


def _dq_kernel(*refs, cfg: _Config, has_seg: bool):
  (q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref), seg_ref, (dq_ref,) = _split(
      refs, has_seg, 6)
  prob, bq, bk = cfg.prob, cfg.blocks.block_q, cfg.blocks.block_k
  i = pl.program_id(0)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_pos = i * bq + jnp.arange(bq, dtype=jnp.int32)
  q_seg = seg_ref[pl.ds(i * bq, bq)] if has_seg else None
  lo, full_lo, full_hi, hi = _common.band_blocks(i, bq, bk, prob.seq, prob.left, prob.right)

  def step(kb, dq, windowed):
    start = pl.multiple_of(kb * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    p = jnp.exp(_dot_t(q, k) * prob.scale - lse[:, None])
    k_seg = seg_ref[pl.ds(start, bk)] if has_seg else None
    mask = _mask(q_pos, start + jnp.arange(bk, dtype=jnp.int32), q_seg, k_seg, prob, windowed,
                 cfg.extra_mask)
    if mask is not None:
      p = jnp.where(mask, p, 0.0)
    ds = p * (_dot_t(do, v) - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  dq = jnp.zeros((bq, cfg.d_pad), jnp.float32)
  dq = jax.lax.fori_loop(lo, full_lo, functools.partial(step, windowed=True), dq)
  dq = jax.lax.fori_loop(full_lo, full_hi, functools.partial(step, windowed=False), dq)
  dq = jax.lax.fori_loop(full_hi, hi, functools.partial(step, windowed=True), dq)
  dq_ref[...] = (dq * prob.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg: _Config, has_seg: bool):
  (k_ref, v_ref, q_ref, do_ref, lse_ref, delta_ref), seg_ref, (dk_ref, dv_ref) = _split(
      refs, has_seg, 6)
  prob, bq, bk = cfg.prob, cfg.blocks.block_q_dkv, cfg.blocks.block_k_dkv
  j = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]
  k_pos = j * bk + jnp.arange(bk, dtype=jnp.int32)
  k_seg = seg_ref[pl.ds(j * bk, bk)] if has_seg else None
  # Key j is seen by queries j - right .. j + left: the band with the sides swapped.
  lo, full_lo, full_hi, hi = _common.band_blocks(j, bk, bq, prob.seq, prob.right, prob.left)

  def step(qb, carry, windowed):
    dk, dv = carry
    start = pl.multiple_of(qb * bq, bq)
    q = q_ref[pl.ds(start, bq), :]
    do = do_ref[pl.ds(start, bq), :]
    lse = lse_ref[pl.ds(start, bq)]
    delta = delta_ref[pl.ds(start, bq)]
    # Transposed tile: rows are keys, columns are queries.
    pt = jnp.exp(_dot_t(k, q) * prob.scale - lse[None, :])
    q_pos = start + jnp.arange(bq, dtype=jnp.int32)
    q_seg = seg_ref[pl.ds(start, bq)] if has_seg else None
    mask = _mask(q_pos, k_pos, q_seg, k_seg, prob, windowed, cfg.extra_mask)
    if mask is not None:
      # Partial tiles may hold queries of padding; drop them as well.
      mask = mask.T & (q_pos < prob.seq)[None, :] if windowed else mask.T
      pt = jnp.where(mask, pt, 0.0)
    dv = dv + _dot(pt.astype(do.dtype), do)
    dst = pt * (_dot_t(v, do) - delta[None, :])
    dk = dk + _dot(dst.astype(q.dtype), q)
    return dk, dv

  zeros = jnp.zeros((bk, cfg.d_pad), jnp.float32)
  carry = (zeros, zeros)
  carry = jax.lax.fori_loop(lo, full_lo, functools.partial(step, windowed=True), carry)
  carry = jax.lax.fori_loop(full_lo, full_hi, functools.partial(step, windowed=False), carry)
  carry = jax.lax.fori_loop(full_hi, hi, functools.partial(step, windowed=True), carry)
  dk, dv = carry
  dk_ref[...] = (dk * prob.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(q, k, v, seg, out, lse, dout, cfg: _Config):
  prob, blocks = cfg.prob, cfg.blocks
  g = prob.groups
  n, dp = cfg.n_pad, cfg.d_pad
  qp, kp, vp, dop = _pad(q, cfg), _pad(k, cfg), _pad(v, cfg), _pad(dout, cfg)
  # delta_i = sum_j p_ij dp_ij = <out_i, dout_i>: a cheap elementwise pass left to XLA.
  delta = jnp.einsum("bnhd,bnhd->bhn", out.astype(jnp.float32), dop.astype(jnp.float32))
  has_seg = seg is not None
  grid_common = dict(compiler_params=_params(cfg), interpret=cfg.interpret)

  bq, bk = blocks.block_q, blocks.block_k
  in_specs = [
      pl.BlockSpec((None, bq, None, dp), lambda i, z, h: (z, i, h, 0)),
      pl.BlockSpec((None, bq, None, dp), lambda i, z, h: (z, i, h, 0)),
      pl.BlockSpec((None, None, bq), lambda i, z, h: (z, h, i)),
      pl.BlockSpec((None, None, bq), lambda i, z, h: (z, h, i)),
      pl.BlockSpec((None, n, None, dp), lambda i, z, h: (z, 0, _common.div(h, g), 0)),
      pl.BlockSpec((None, n, None, dp), lambda i, z, h: (z, 0, _common.div(h, g), 0)),
  ]
  args = [qp, dop, lse, delta, kp, vp]
  if has_seg:
    in_specs.append(pl.BlockSpec((None, n), lambda i, z, h: (z, 0)))
    args.append(seg)
  (dq,) = _pallas_util.call(
      functools.partial(_dq_kernel, cfg=cfg, has_seg=has_seg),
      args=args,
      out_shape=[jax.ShapeDtypeStruct(qp.shape, jnp.float32)],
      out_specs=[pl.BlockSpec((None, bq, None, dp), lambda i, z, h: (z, i, h, 0))],
      poison=cfg.poison, in_specs=in_specs, grid=(n // bq, prob.batch, prob.heads),
      name="windowed_attention_dq", **grid_common)

  bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
  in_specs = [
      pl.BlockSpec((None, bk, None, dp), lambda j, z, h: (z, j, _common.div(h, g), 0)),
      pl.BlockSpec((None, bk, None, dp), lambda j, z, h: (z, j, _common.div(h, g), 0)),
      pl.BlockSpec((None, n, None, dp), lambda j, z, h: (z, 0, h, 0)),
      pl.BlockSpec((None, n, None, dp), lambda j, z, h: (z, 0, h, 0)),
      pl.BlockSpec((None, None, n), lambda j, z, h: (z, h, 0)),
      pl.BlockSpec((None, None, n), lambda j, z, h: (z, h, 0)),
  ]
  args = [kp, vp, qp, dop, lse, delta]
  if has_seg:
    in_specs.append(pl.BlockSpec((None, n), lambda j, z, h: (z, 0)))
    args.append(seg)
  per_head = jax.ShapeDtypeStruct((prob.batch, n, prob.heads, dp), jnp.float32)
  dk, dv = _pallas_util.call(
      functools.partial(_dkv_kernel, cfg=cfg, has_seg=has_seg),
      args=args,
      out_shape=[per_head, per_head],
      out_specs=[pl.BlockSpec((None, bk, None, dp), lambda j, z, h: (z, j, h, 0))] * 2,
      poison=cfg.poison, in_specs=in_specs, grid=(n // bk, prob.batch, prob.heads),
      name="windowed_attention_dkv", **grid_common)

  def unpad(x, heads):
    return x[:, :prob.seq, :heads, :prob.head_dim]

  def group_sum(x):
    # dk/dv were computed per query head; a kv head's gradient is the sum over its group.
    x = unpad(x, prob.heads)
    return x.reshape(prob.batch, prob.seq, prob.kv_heads, g, prob.head_dim).sum(axis=3)

  return unpad(dq, prob.heads), group_sum(dk), group_sum(dv)


# ------------------------------------------------------------------------------ vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, seg, cfg: _Config):
  out, _ = _forward(q, k, v, seg, cfg)
  return out[:, :cfg.prob.seq, :, :cfg.prob.head_dim]


def _attention_fwd(q, k, v, seg, cfg):
  out, lse = _forward(q, k, v, seg, cfg)
  return out[:, :cfg.prob.seq, :, :cfg.prob.head_dim], (q, k, v, seg, out, lse)


def _attention_bwd(cfg, res, dout):
  q, k, v, seg, out, lse = res
  dq, dk, dv = _backward(q, k, v, seg, out, lse, dout, cfg)
  seg_ct = None if seg is None else np.zeros(seg.shape, jax.dtypes.float0)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), seg_ct


_attention.defvjp(_attention_fwd, _attention_bwd)
