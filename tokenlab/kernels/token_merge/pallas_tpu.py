"""Pallas (Mosaic) TPU kernels for token merging.

Same algorithms as pallas_gpu.py, laid out for the TPU:

- `best_match`: grid (batch, A blocks, B blocks) with the B axis a sequential reduction; the
  running max/argmax lives in the resident output block, so scores stay in VMEM.
- `segment_mean`: grid (batch, output-group blocks). The token range of each output block is
  prefetched into SMEM (scalar prefetch); the kernel DMAs just those token blocks of x from HBM,
  double-buffered, and accumulates with one-hot matmuls on the MXU (f32, precision HIGHEST).
- `local_window_merge`: blocks of 8 windows per grid step, everything in VMEM.

Tests run them in TPU interpret mode on CPU (`pltpu.InterpretParams`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tokenlab.kernels.token_merge import _blocks
from tokenlab.kernels.token_merge import reference as ref
from tokenlab.kernels.token_merge.pallas_gpu import _pad_to, group_ranges

_LANES = 128


def _interpret(interpret: bool):
  return pltpu.InterpretParams() if interpret else False


def _params(*semantics: str):
  return pltpu.CompilerParams(dimension_semantics=semantics)


@functools.partial(jax.jit, static_argnames=("protected_a", "protected_b", "interpret",
                                             "block_a", "block_b"))
def best_match(a: jax.Array, b: jax.Array, protected_a: int, protected_b: int, *,
               interpret: bool = False, block_a: int = 128, block_b: int = 256):
  """(B, NA, D), (B, NB, D) unit rows -> node_max (B, NA) f32, node_idx (B, NA) int32."""
  bsz, na, d = a.shape
  nb = b.shape[1]
  na_p = pl.cdiv(na, block_a) * block_a
  nb_p = pl.cdiv(nb, block_b) * block_b
  a = _pad_to(a.astype(jnp.float32), 1, na_p)
  b = _pad_to(b.astype(jnp.float32), 1, nb_p)

  def kernel(a_ref, b_ref, max_ref, idx_ref):
    i, j = pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _():
      max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
      idx_ref[...] = jnp.zeros(idx_ref.shape, jnp.int32)

    mx, idx = _blocks.match_block(a_ref[...], b_ref[...], j * block_b, nb, protected_b)
    run_max, run_idx = _blocks.merge_running(max_ref[0], idx_ref[0], mx, idx)
    row = i * block_a + jax.lax.broadcasted_iota(jnp.int32, (block_a,), 0)
    max_ref[0] = jnp.where(row < protected_a, -jnp.inf, run_max)
    idx_ref[0] = jnp.where(row < protected_a, 0, run_idx)  # as the reference: no match

  node_max, node_idx = pl.pallas_call(
      kernel,
      grid=(bsz, na_p // block_a, nb_p // block_b),
      in_specs=[pl.BlockSpec((None, block_a, d), lambda bi, i, j: (bi, i, 0)),
                pl.BlockSpec((None, block_b, d), lambda bi, i, j: (bi, j, 0))],
      out_specs=[pl.BlockSpec((None, 1, block_a), lambda bi, i, j: (bi, 0, i)),
                 pl.BlockSpec((None, 1, block_a), lambda bi, i, j: (bi, 0, i))],
      out_shape=[jax.ShapeDtypeStruct((bsz, 1, na_p), jnp.float32),
                 jax.ShapeDtypeStruct((bsz, 1, na_p), jnp.int32)],
      compiler_params=_params("parallel", "parallel", "arbitrary"),
      interpret=_interpret(interpret),
  )(a, b)
  return node_max[:, 0, :na], jnp.minimum(node_idx[:, 0, :na], nb - 1)


@functools.partial(jax.jit, static_argnames=("num_groups", "interpret", "bm", "bn"))
def segment_mean(x: jax.Array, w: jax.Array, gid: jax.Array, num_groups: int, *,
                 interpret: bool = False, bm: int = 128, bn: int = 256):
  """Weighted mean over contiguous groups; gid (B, N) nondecreasing (ids >= M are dropped).

  Returns merged (B, M, D) in x's dtype and weight sums (B, M) float32.
  """
  bsz, n, d = x.shape
  m_p = pl.cdiv(num_groups, bm) * bm
  n_p = pl.cdiv(n, bn) * bn
  gid = jnp.where((gid >= 0) & (gid < num_groups), gid, _blocks.BIG)
  ranges = group_ranges(gid, m_p // bm, bm)
  x = _pad_to(x, 1, n_p)
  w = _pad_to(w.astype(jnp.float32), 1, n_p)[:, None, :]
  gid = _pad_to(gid, 1, n_p, _blocks.BIG)[:, None, :]

  def kernel(range_ref, x_hbm, w_ref, g_ref, out_ref, wsum_ref, xbuf, sem):
    bi, i = pl.program_id(0), pl.program_id(1)
    first = jax.lax.div(range_ref[bi, i], bn)
    last = jax.lax.div(range_ref[bi, i + 1] + bn - 1, bn)  # exclusive
    g0 = i * bm

    def copy(k, slot):
      return pltpu.make_async_copy(x_hbm.at[bi, pl.ds(pl.multiple_of(k * bn, bn), bn)],
                                   xbuf.at[slot], sem.at[slot])

    @pl.when(first < last)
    def _():
      copy(first, 0).start()

    def body(k, carry):
      # Double buffering: block k + 1 streams in while block k is reduced.
      slot = jax.lax.rem(k - first, 2)

      @pl.when(k + 1 < last)
      def _():
        copy(k + 1, 1 - slot).start()

      copy(k, slot).wait()
      acc, wacc = carry
      start = pl.multiple_of(k * bn, bn)
      a, s = _blocks.segment_block(xbuf[slot], w_ref[0, pl.ds(start, bn)],
                                   g_ref[0, pl.ds(start, bn)], g0, bm)
      return acc + a, wacc + s

    init = (jnp.zeros((bm, d), jnp.float32), jnp.zeros((bm, 1), jnp.float32))
    acc, wacc = jax.lax.fori_loop(first, last, body, init)
    ok = wacc > 0
    out_ref[...] = jnp.where(ok, acc / jnp.where(ok, wacc, 1.0), 0.0).astype(out_ref.dtype)
    wsum_ref[...] = wacc

  out, wsum = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1,
          grid=(bsz, m_p // bm),
          in_specs=[pl.BlockSpec(memory_space=pl.ANY),
                    pl.BlockSpec((None, 1, n_p), lambda bi, i, rng: (bi, 0, 0)),
                    pl.BlockSpec((None, 1, n_p), lambda bi, i, rng: (bi, 0, 0))],
          out_specs=[pl.BlockSpec((None, bm, d), lambda bi, i, rng: (bi, i, 0)),
                     pl.BlockSpec((None, bm, 1), lambda bi, i, rng: (bi, i, 0))],
          scratch_shapes=[pltpu.VMEM((2, bn, d), x.dtype), pltpu.SemaphoreType.DMA((2,))],
      ),
      out_shape=[jax.ShapeDtypeStruct((bsz, m_p, d), x.dtype),
                 jax.ShapeDtypeStruct((bsz, m_p, 1), jnp.float32)],
      compiler_params=_params("parallel", "parallel"),
      interpret=_interpret(interpret),
  )(ranges, x, w, gid)
  return out[:, :num_groups], wsum[:, :num_groups, 0]


def _window_call(x, metric, w, window: int, r_w: int, interpret, params, nwb: int = 8):
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
  call = functools.partial(_window_call, interpret=_interpret(interpret),
                           params=_params("parallel", "parallel"))
  return local_window_merge_with(call, x, metric, w, window, r)
