"""Pallas windowed-attention kernels (GPU: Triton lowering, TPU: Mosaic) in interpret mode.

Every call poisons its output buffers (NaN) first, so a row a kernel fails to write shows up
as a NaN error. Shapes are small because the interpreter is slow; blocks are small (8-16) so
that bands of several blocks, full blocks and partial blocks all occur.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from test_windowed_attention_oracle import attention_and_grads, dense_mask, rel_err
from tokenlab.kernels import windowed_attention
from tokenlab.kernels.windowed_attention import _pallas_util, pallas_gpu, pallas_tpu

F32_TOL = 1e-5
BF16_TOL = 2e-2

KERNELS = {
    "pallas_gpu": (pallas_gpu, pallas_gpu.BlockSizes(16, 16, 16, 16)),
    "pallas_tpu": (pallas_tpu, pallas_tpu.BlockSizes(16, 8, 8, 16)),
}

# (batch, seq, heads, kv_heads, head_dim, (left, right), segments, dtype)
CASES = [
    (2, 37, 4, 2, 8, (5, 0), True, jnp.float32),  # GQA, seq % block != 0, causal band
    (1, 40, 2, 2, 12, (0, 0), False, jnp.float32),  # window 0; head_dim not a power of 2
    (1, 33, 2, 1, 8, (100, 1), True, jnp.float32),  # left > seq, right 1
    (1, 44, 4, 2, 16, (7, 9), True, jnp.bfloat16),  # odd two-sided window, bf16
]


def _inputs(seed, b, n, h, kh, d, dtype):
  rng = np.random.default_rng(seed)
  q, dout = rng.normal(size=(2, b, n, h, d))
  k, v = rng.normal(size=(2, b, n, kh, d))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v, dout))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[1]}w{c[5]}s{c[6]:d}")
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_matches_float64(name, case):
  mod, blocks = KERNELS[name]
  b, n, h, kh, d, (left, right), with_seg, dtype = case
  q, k, v, dout = _inputs(n, b, n, h, kh, d, dtype)
  seg = None
  if with_seg:
    seg = np.random.default_rng(n + 1).integers(0, 3, size=(b, n)).astype(np.int32)

  def run(q, k, v, dout):
    fn = functools.partial(mod.windowed_attention, window=(left, right),
                           segment_ids=None if seg is None else jnp.asarray(seg),
                           block_sizes=blocks, interpret=True, poison=True)
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(dout)

  out, grads = jax.jit(run)(q, k, v, dout)
  assert out.shape == q.shape and out.dtype == dtype
  for x in (out, *grads):
    # NaN here would be a poisoned row the kernel never wrote.
    assert bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
  f64 = [np.asarray(x.astype(jnp.float32), np.float64) for x in (q, k, v, dout)]
  want, want_grads = attention_and_grads(*f64, dense_mask(n, left, right, seg))
  tol = F32_TOL if dtype == jnp.float32 else BF16_TOL
  errs = [rel_err(out.astype(jnp.float32), want)]
  errs += [rel_err(g.astype(jnp.float32), w) for g, w in zip(grads, want_grads)]
  assert max(errs) < tol, f"rel errors out,dq,dk,dv = {errs}"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_public_api_dispatches_to_kernel_in_interpret_mode(name):
  # Default block sizes (clamped to the short sequence) through the public function.
  q, k, v, _ = _inputs(3, 1, 20, 2, 1, 8, jnp.float32)
  got = jax.jit(lambda q, k, v: windowed_attention(
      q, k, v, window=(3, 2), implementation=name))(q, k, v)
  want = jax.jit(lambda q, k, v: windowed_attention(
      q, k, v, window=(3, 2), implementation="reference"))(q, k, v)
  assert rel_err(got, want) < F32_TOL


def test_poisoning_catches_an_unwritten_row():
  # The poison mechanism itself must be able to fail: a kernel that skips its second block
  # leaves NaN there.
  def kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  x = jnp.ones((16, 8), jnp.float32)
  spec = pl.BlockSpec((8, 8), lambda i: (i, 0))
  (out,) = _pallas_util.call(kernel, args=[x], out_shape=[jax.ShapeDtypeStruct(x.shape,
                                                                              x.dtype)],
                             out_specs=[spec], poison=True, in_specs=[spec], grid=(2,),
                             interpret=True)
  assert bool(jnp.all(out[:8] == 1.0))
  assert bool(jnp.all(jnp.isnan(out[8:])))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_kernels_lower_for_their_backend(platform, dtype, monkeypatch):
  # No GPU or TPU here, but Pallas lowers the kernels to Triton IR / Mosaic MLIR in Python;
  # this catches unsupported ops and block shapes before a device ever sees them (the final
  # Triton/Mosaic compilation on the device is not exercised).
  mod = pallas_gpu if platform == "cuda" else pallas_tpu
  if platform == "tpu":
    # Mosaic's lowering asks for the chip's tiling; pretend the CPU is a v5e.
    from jax._src.pallas.mosaic import tpu_info
    monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind,
                        lambda: tpu_info._get_tpu_info_impl(tpu_info.ChipVersion.TPU_V5E, 1))
  x = jax.ShapeDtypeStruct((1, 512, 4, 128), dtype)
  kv = jax.ShapeDtypeStruct((1, 512, 2, 128), dtype)
  seg = jax.ShapeDtypeStruct((1, 512), jnp.int32)

  def loss(q, k, v, s):
    return jnp.sum(mod.windowed_attention(q, k, v, window=(200, 3), segment_ids=s)
                   .astype(jnp.float32))

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, kv, kv, seg).lower(
      lowering_platforms=(platform,)).as_text()
  marker = "xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
  # Forward, dq and dk/dv kernels.
  assert text.count(marker) >= 3, text[:2000]


# ------------------------------------------- 2-D neighborhood (CLEAR's circle) in the kernels


def _grid_mask(height, width, radius, shape):
  y, x = np.divmod(np.arange(height * width), width)
  dy, dx = y[None, :] - y[:, None], x[None, :] - x[:, None]
  if shape == "circle":
    return dy * dy + dx * dx < radius * radius
  return np.maximum(np.abs(dy), np.abs(dx)) <= radius


# (height, width, radius, shape): a band of 16 = 2 * 7 + 2 over blocks of 8, so full tiles
# (where the 1-D window needs no mask but the 2-D test still does) occur as well as partial
# ones. The square shape shares every line of the kernels' path (the reference tests it).
GRID_CASES = [(6, 7, 3, "circle")]


@pytest.mark.parametrize("grid", GRID_CASES, ids=lambda g: f"{g[0]}x{g[1]}{g[3]}{g[2]}")
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_neighborhood_matches_float64_and_reference(name, grid):
  from tokenlab.kernels import neighborhood_attention_2d
  mod, _ = KERNELS[name]
  height, width, radius, shape = grid
  n = height * width
  q, k, v, dout = _inputs(11, 1, n, 2, 1, 8, jnp.float32)
  blocks = (pallas_gpu.BlockSizes(8, 8, 8, 8) if name == "pallas_gpu"
            else pallas_tpu.BlockSizes(8, 8, 8, 8))

  def run(impl, q, k, v, dout):
    kw = dict(block_sizes=blocks, poison=True, interpret=True) if impl != "reference" else {}
    fn = functools.partial(neighborhood_attention_2d, height=height, width=width,
                           radius=radius, shape=shape, implementation=impl, **kw)
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(dout)

  out, grads = jax.jit(functools.partial(run, name))(q, k, v, dout)
  for x in (out, *grads):
    assert bool(jnp.all(jnp.isfinite(x)))   # NaN: a poisoned row never written
  f64 = [np.asarray(x, np.float64) for x in (q, k, v, dout)]
  want, want_grads = attention_and_grads(
      *f64, dense_mask(n, n, n, extra=_grid_mask(height, width, radius, shape)))
  errs = [rel_err(out, want)] + [rel_err(g, w) for g, w in zip(grads, want_grads)]
  assert max(errs) < F32_TOL, f"rel errors out,dq,dk,dv vs float64 = {errs}"
  ref_out, ref_grads = jax.jit(functools.partial(run, "reference"))(q, k, v, dout)
  errs = [rel_err(out, ref_out)] + [rel_err(g, r) for g, r in zip(grads, ref_grads)]
  assert max(errs) < F32_TOL, f"rel errors out,dq,dk,dv vs the jnp reference = {errs}"


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_kernels_lower_with_the_neighborhood_mask(platform, monkeypatch):
  # The 2-D test (float row/column arithmetic) must lower to Triton IR and Mosaic MLIR too.
  from tokenlab.kernels.windowed_attention._common import NeighborhoodMask
  mod = pallas_gpu if platform == "cuda" else pallas_tpu
  if platform == "tpu":
    from jax._src.pallas.mosaic import tpu_info
    monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind,
                        lambda: tpu_info._get_tpu_info_impl(tpu_info.ChipVersion.TPU_V5E, 1))
  x = jax.ShapeDtypeStruct((1, 1024, 2, 64), jnp.float32)
  mask = NeighborhoodMask(32, 4.0, "circle")

  def loss(q, k, v):
    return jnp.sum(mod.windowed_attention(q, k, v, window=(3 * 32 + 3, 3 * 32 + 3),
                                          extra_mask=mask))

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x).lower(
      lowering_platforms=(platform,)).as_text()
  marker = "xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
  assert text.count(marker) >= 3, text[:2000]
