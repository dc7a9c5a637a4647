"""Pallas (Triton) GPU kernels for token merging.

- `best_match`: ToMe's A -> B best match. One program per (batch, block of A rows) streams the
  B rows block by block keeping a running max/argmax, so the A x B score matrix never reaches
  device memory.
- `segment_mean`: weighted mean over contiguous groups (sorted group ids). One program per
  (batch, block of output groups); it visits only the token blocks that hold its groups (their
  range comes from a searchsorted over the ids), accumulating with a one-hot matmul and
  dividing at the end: sum and mean in one pass over x, no atomics.
- `local_window_merge`: a selection kernel per (batch, block of windows) computes the adjacent
  similarities, the greedy pairs and the group ids on chip; `segment_mean` then averages (the
  groups are contiguous). Unlike the TPU version it is two kernels, because Triton cannot
  slice or compact values inside a kernel; only int32 ids travel between them.

Written for the Triton backend; tests run them with interpret=True on CPU and lower them to
Triton IR for a CUDA target (no GPU needed). Loaded tensors are powers of two, as Triton
requires; inputs are padded to them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from tokenlab.kernels.token_merge import _blocks
from tokenlab.kernels.token_merge import reference as ref


def _pad_to(x, axis: int, size: int, value=0):
  pad = size - x.shape[axis]
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _params(num_warps: int = 4, num_stages: int = 2):
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


@functools.partial(jax.jit, static_argnames=("protected_a", "protected_b", "interpret",
                                             "block_a", "block_b"))
def best_match(a: jax.Array, b: jax.Array, protected_a: int, protected_b: int, *,
               interpret: bool = False, block_a: int = 64, block_b: int = 64):
  """(B, NA, D), (B, NB, D) unit rows -> node_max (B, NA) f32, node_idx (B, NA) int32."""
  bsz, na, d = a.shape
  nb = b.shape[1]
  dp = pl.next_power_of_2(d)
  block_a = min(block_a, pl.next_power_of_2(na))
  block_b = min(block_b, pl.next_power_of_2(nb))
  na_p = pl.cdiv(na, block_a) * block_a
  nb_p = pl.cdiv(nb, block_b) * block_b
  a = _pad_to(_pad_to(a.astype(jnp.float32), 2, dp), 1, na_p)
  b = _pad_to(_pad_to(b.astype(jnp.float32), 2, dp), 1, nb_p)

  def kernel(a_ref, b_ref, max_ref, idx_ref):
    i = pl.program_id(1)
    a_blk = a_ref[...]

    def body(j, carry):
      b_blk = b_ref[pl.ds(j * block_b, block_b), :]
      mx, idx = _blocks.match_block(a_blk, b_blk, j * block_b, nb, protected_b)
      return _blocks.merge_running(*carry, mx, idx)

    init = (jnp.full((block_a,), -jnp.inf, jnp.float32), jnp.zeros((block_a,), jnp.int32))
    mx, idx = jax.lax.fori_loop(0, nb_p // block_b, body, init)
    row = i * block_a + jax.lax.broadcasted_iota(jnp.int32, (block_a,), 0)
    max_ref[...] = jnp.where(row < protected_a, -jnp.inf, mx)
    idx_ref[...] = jnp.where(row < protected_a, 0, idx)  # as the reference: no match

  node_max, node_idx = pl.pallas_call(
      kernel,
      grid=(bsz, na_p // block_a),
      in_specs=[pl.BlockSpec((None, block_a, dp), lambda bi, i: (bi, i, 0)),
                pl.BlockSpec((None, nb_p, dp), lambda bi, i: (bi, 0, 0))],
      out_specs=[pl.BlockSpec((None, block_a), lambda bi, i: (bi, i)),
                 pl.BlockSpec((None, block_a), lambda bi, i: (bi, i))],
      out_shape=[jax.ShapeDtypeStruct((bsz, na_p), jnp.float32),
                 jax.ShapeDtypeStruct((bsz, na_p), jnp.int32)],
      compiler_params=_params(),
      interpret=interpret,
  )(a, b)
  return node_max[:, :na], jnp.minimum(node_idx[:, :na], nb - 1)


def group_ranges(gid: jax.Array, num_blocks: int, bm: int) -> jax.Array:
  """(B, N) nondecreasing ids -> (B, num_blocks + 1) first token of groups k * bm."""
  starts = jnp.arange(num_blocks + 1, dtype=jnp.int32) * bm
  return jax.vmap(lambda g: jnp.searchsorted(g, starts, side="left"))(gid).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_groups", "interpret", "bm", "bn"))
def segment_mean(x: jax.Array, w: jax.Array, gid: jax.Array, num_groups: int, *,
                 interpret: bool = False, bm: int = 64, bn: int = 64):
  """Weighted mean over contiguous groups; gid (B, N) nondecreasing (ids >= M are dropped).

  Returns merged (B, M, D) in x's dtype and weight sums (B, M) float32.
  """
  bsz, n, d = x.shape
  dp = pl.next_power_of_2(d)
  bm = min(bm, pl.next_power_of_2(num_groups))
  bn = min(bn, pl.next_power_of_2(n))
  m_p = pl.cdiv(num_groups, bm) * bm
  n_p = pl.cdiv(n, bn) * bn
  # Padding tokens get an id past every group so no output block ever claims them.
  gid = jnp.where((gid >= 0) & (gid < num_groups), gid, _blocks.BIG)
  ranges = group_ranges(gid, m_p // bm, bm)
  x = _pad_to(_pad_to(x, 2, dp), 1, n_p)
  w = _pad_to(w.astype(jnp.float32), 1, n_p)
  gid = _pad_to(gid, 1, n_p, _blocks.BIG)
  nblk = ranges.shape[1]

  def kernel(range_ref, x_ref, w_ref, g_ref, out_ref, wsum_ref):
    i = pl.program_id(1)
    lo = range_ref[i]
    hi = range_ref[i + 1]
    g0 = i * bm

    def body(k, carry):
      acc, wacc = carry
      sl = pl.ds(k * bn, bn)
      a, s = _blocks.segment_block(x_ref[sl, :], w_ref[sl], g_ref[sl], g0, bm)
      return acc + a, wacc + s

    init = (jnp.zeros((bm, dp), jnp.float32), jnp.zeros((bm, 1), jnp.float32))
    acc, wacc = jax.lax.fori_loop(jax.lax.div(lo, bn), jax.lax.div(hi + bn - 1, bn), body, init)
    ok = wacc > 0
    out_ref[...] = jnp.where(ok, acc / jnp.where(ok, wacc, 1.0), 0.0).astype(out_ref.dtype)
    wsum_ref[...] = wacc[:, 0]

  out, wsum = pl.pallas_call(
      kernel,
      grid=(bsz, m_p // bm),
      in_specs=[pl.BlockSpec((None, nblk), lambda bi, i: (bi, 0)),
                pl.BlockSpec((None, n_p, dp), lambda bi, i: (bi, 0, 0)),
                pl.BlockSpec((None, n_p), lambda bi, i: (bi, 0)),
                pl.BlockSpec((None, n_p), lambda bi, i: (bi, 0))],
      out_specs=[pl.BlockSpec((None, bm, dp), lambda bi, i: (bi, i, 0)),
                 pl.BlockSpec((None, bm), lambda bi, i: (bi, i))],
      out_shape=[jax.ShapeDtypeStruct((bsz, m_p, dp), x.dtype),
                 jax.ShapeDtypeStruct((bsz, m_p), jnp.float32)],
      compiler_params=_params(),
      interpret=interpret,
  )(ranges, x, w, gid)
  return out[:, :num_groups, :d], wsum[:, :num_groups]


def _select_kernel_call(metric, window: int, r_w: int, interpret: bool, nwb: int = 8):
  """Group ids (B, nw * window) of the full windows of `metric`, computed on chip.

  One program per (batch, nwb windows) loads its tokens and the same tokens shifted by one (a
  second load, since Triton has no value slicing), computes adjacent cosine similarities,
  runs the r_w greedy rounds and turns the chosen pairs into group ids with a cumsum.
  """
  bsz, n, c = metric.shape
  nw = n // window
  cp = pl.next_power_of_2(c)
  nwb = min(nwb, pl.next_power_of_2(nw))
  t = nwb * window
  nw_p = pl.cdiv(nw, nwb) * nwb
  # One extra row so the shifted load of the last block stays inside the array.
  m = _pad_to(_pad_to(metric.astype(jnp.float32), 2, cp), 1, nw_p * window + 1)
  n_out = window - r_w

  def kernel(m_ref, gid_ref):
    i = pl.program_id(1)
    cur = m_ref[pl.ds(i * t, t), :]
    nxt = m_ref[pl.ds(i * t + 1, t), :]
    unit = lambda v: v / jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True)), 1e-30)
    sim = jnp.sum(unit(cur) * unit(nxt), axis=1).reshape(nwb, window)
    pos = jax.lax.broadcasted_iota(jnp.int32, (nwb, window), 1)

    def round_(_, carry):
      free, absorbed, stuck = carry
      key = jnp.where(free, sim, -jnp.inf)
      mx = jnp.max(key, axis=1)
      q = jnp.min(jnp.where(free & (key == mx[:, None]), pos, _blocks.BIG), axis=1)
      ok = q < _blocks.BIG
      qb, okb = q[:, None], ok[:, None]
      absorbed = absorbed | ((pos == qb + 1) & okb)
      free = free & ~((pos >= qb - 1) & (pos <= qb + 1) & okb)
      return free, absorbed, stuck | ~ok

    init = (pos < window - 1, jnp.zeros((nwb, window), bool), jnp.zeros((nwb,), bool))
    _, absorbed, stuck = jax.lax.fori_loop(0, r_w, round_, init)
    fallback = (pos % 2 == 1) & (pos < 2 * r_w)
    absorbed = jnp.where(stuck[:, None], fallback, absorbed)
    slot = jnp.cumsum(jnp.where(absorbed, 0, 1), axis=1) - 1
    win = i * nwb + jax.lax.broadcasted_iota(jnp.int32, (nwb, window), 0)
    gid_ref[...] = win * n_out + slot

  gid = pl.pallas_call(
      kernel,
      grid=(bsz, nw_p // nwb),
      in_specs=[pl.BlockSpec((None, nw_p * window + 1, cp), lambda bi, i: (bi, 0, 0))],
      out_specs=pl.BlockSpec((None, nwb, window), lambda bi, i: (bi, i, 0)),
      out_shape=jax.ShapeDtypeStruct((bsz, nw_p, window), jnp.int32),
      compiler_params=_params(),
      interpret=interpret,
  )(m)
  return gid[:, :nw].reshape(bsz, nw * window)


def window_group_ids(metric, window: int, r: int, select_full) -> tuple[jax.Array, int]:
  """Group ids (B, N) and M: full windows through `select_full`, the short tail in jnp."""
  bsz, n, _ = metric.shape
  nfull = (n // window) * window
  r_w = min(r, window // 2)
  parts, offset = [], 0
  if nfull:
    if r_w:
      parts.append(select_full(metric[:, :nfull], window, r_w))
    else:
      parts.append(jnp.broadcast_to(jnp.arange(nfull, dtype=jnp.int32), (bsz, nfull)))
    offset = nfull - (nfull // window) * r_w
  if nfull < n:
    tail, tail_m = ref.local_window_plan(metric[:, nfull:], window, r)
    parts.append(tail + offset)
    offset += tail_m
  return jnp.concatenate(parts, axis=1), offset


@functools.partial(jax.jit, static_argnames=("window", "r", "interpret"))
def local_window_merge(x: jax.Array, metric: jax.Array, w: jax.Array, window: int, r: int, *,
                       interpret: bool = False):
  """MergeDNA local merging -> (merged (B, M, D), group_ids (B, N), sizes (B, M)).

  Two kernels: the window selection kernel (metric in, group ids out) and `segment_mean`
  (local-window groups are contiguous). x is read once, by the second; only the int32 ids
  pass between them. Triton needs power-of-two tensors, so a window that is not a power of
  two takes its group ids from the jnp reference instead of the selection kernel.
  """
  if window & (window - 1) == 0:
    select = functools.partial(_select_kernel_call, interpret=interpret)
  else:
    select = lambda m, win, r_w: ref.local_window_plan(m, win, r_w)[0]
  gid, m = window_group_ids(metric, window, r, select)
  merged, wsum = segment_mean(x, w, gid, m, interpret=interpret)
  return merged, gid, wsum
