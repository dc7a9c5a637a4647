"""Pallas (Triton) GPU kernels for token merging.

- `best_match`: ToMe's A -> B best match. One program per (batch, block of A rows) streams the
  B rows block by block keeping a running max/argmax, so the A x B score matrix never reaches
  device memory.
- `segment_mean`: weighted mean over contiguous groups (sorted group ids). One program per
  (batch, block of output groups); it visits only the token blocks that hold its groups (their
  range comes from a searchsorted over the ids), accumulating with a one-hot matmul and
  dividing at the end: sum and mean in one pass over x, no atomics.
- `local_window_merge`: one program per (batch, block of windows): similarity, greedy pair
  selection and weighted averaging of the window, all on chip.

Written for the Triton backend; tests run them with interpret=True on CPU. Block sizes are
powers of two as Triton requires; inputs are padded to them.
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
    acc, wacc = jax.lax.fori_loop(lo // bn, (hi + bn - 1) // bn, body, init)
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


def _window_call(x, metric, w, window: int, r_w: int, interpret: bool, params, nwb: int = 8):
  """Runs `_blocks.window_block` over the full windows of (B, nw * window, ...) inputs."""
  bsz, n, d = x.shape
  nw = n // window
  c = metric.shape[2]
  nwb = min(nwb, nw)
  nw_p = pl.cdiv(nw, nwb) * nwb
  xw = _pad_to(x.reshape(bsz, nw, window, d), 1, nw_p)
  mw = _pad_to(metric.reshape(bsz, nw, window, c), 1, nw_p)
  ww = _pad_to(w.reshape(bsz, nw, window), 1, nw_p)
  n_out = window - r_w

  def kernel(x_ref, m_ref, w_ref, out_ref, gid_ref, size_ref):
    out, slot, size = _blocks.window_block(x_ref[...], m_ref[...], w_ref[...], r_w)
    out_ref[...] = out
    gid_ref[...] = slot
    size_ref[...] = size

  out, slot, size = pl.pallas_call(
      kernel,
      grid=(bsz, nw_p // nwb),
      in_specs=[pl.BlockSpec((None, nwb, window, d), lambda bi, i: (bi, i, 0, 0)),
                pl.BlockSpec((None, nwb, window, c), lambda bi, i: (bi, i, 0, 0)),
                pl.BlockSpec((None, nwb, window), lambda bi, i: (bi, i, 0))],
      out_specs=[pl.BlockSpec((None, nwb, n_out, d), lambda bi, i: (bi, i, 0, 0)),
                 pl.BlockSpec((None, nwb, window), lambda bi, i: (bi, i, 0)),
                 pl.BlockSpec((None, nwb, n_out), lambda bi, i: (bi, i, 0))],
      out_shape=[jax.ShapeDtypeStruct((bsz, nw_p, n_out, d), x.dtype),
                 jax.ShapeDtypeStruct((bsz, nw_p, window), jnp.int32),
                 jax.ShapeDtypeStruct((bsz, nw_p, n_out), jnp.float32)],
      compiler_params=params,
      interpret=interpret,
  )(xw, mw, ww)
  gid = slot[:, :nw] + (jnp.arange(nw, dtype=jnp.int32) * n_out)[None, :, None]
  return (out[:, :nw].reshape(bsz, nw * n_out, d), gid.reshape(bsz, nw * window),
          size[:, :nw].reshape(bsz, nw * n_out))


def local_window_merge_with(window_call, x, metric, w, window: int, r: int):
  """Full windows through `window_call`, the short last window through the reference."""
  bsz, n, _ = x.shape
  nfull = (n // window) * window
  r_w = min(r, window // 2)
  parts = []
  if nfull and r_w:
    parts.append(window_call(x[:, :nfull], metric[:, :nfull], w[:, :nfull], window, r_w))
  elif nfull:
    parts.append((x[:, :nfull], jnp.broadcast_to(jnp.arange(nfull, dtype=jnp.int32), (bsz, nfull)),
                  w[:, :nfull].astype(jnp.float32)))
  if nfull < n:
    tail_gid, tail_m = ref.local_window_plan(metric[:, nfull:], window, r)
    tail_x, tail_w = ref.segment_weighted_mean(x[:, nfull:], w[:, nfull:], tail_gid, tail_m,
                                               sorted_ids=True)
    parts.append((tail_x, tail_gid, tail_w))
  outs, gids, sizes, offset = [], [], [], 0
  for out, gid, size in parts:
    outs.append(out)
    gids.append(gid + offset)
    sizes.append(size)
    offset += out.shape[1]
  return (jnp.concatenate(outs, axis=1), jnp.concatenate(gids, axis=1),
          jnp.concatenate(sizes, axis=1))


@functools.partial(jax.jit, static_argnames=("window", "r", "interpret"))
def local_window_merge(x: jax.Array, metric: jax.Array, w: jax.Array, window: int, r: int, *,
                       interpret: bool = False):
  """Fused MergeDNA local merging -> (merged (B, M, D), group_ids (B, N), sizes (B, M))."""
  call = functools.partial(_window_call, interpret=interpret, params=_params())
  return local_window_merge_with(call, x, metric, w, window, r)
