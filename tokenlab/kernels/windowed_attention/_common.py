"""Argument checks and band arithmetic shared by the reference and the Pallas kernels.

The band: query i sees key j iff ``i - left <= j <= i + right``. Cut both sequences into
blocks; a query block then sees a contiguous run of key blocks (and a key block is seen by a
contiguous run of query blocks, with left and right swapped). Inside that run the blocks in
the middle are *full* (every query of the block sees every key of the block, so no mask is
needed) and the one or two blocks at each end are *partial* (the window mask is needed).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from tokenlab.errors import TokenlabError

IMPLEMENTATIONS = ("reference", "pallas_gpu", "pallas_tpu", "cudnn")

# Logit of a masked pair. Finite, so that max/exp never see inf - inf; far below any real
# logit, so exp(masked - real max) underflows to exactly 0.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class WindowedAttentionError(TokenlabError, ValueError):
  """Bad arguments to windowed attention; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """Validated static description of one windowed-attention call."""
  batch: int
  seq: int
  heads: int
  kv_heads: int
  head_dim: int
  left: int
  right: int
  scale: float

  @property
  def groups(self) -> int:
    """Query heads per key/value head (1 without grouped-query attention)."""
    return self.heads // self.kv_heads


def normalize_window(window) -> tuple[int, int]:
  """Returns (left, right) from an int w (meaning (w, w)) or a pair of ints >= 0."""
  if isinstance(window, bool):
    raise WindowedAttentionError(f"window={window!r}: pass window=(left, right) with ints >= 0")
  if isinstance(window, int):
    window = (window, window)
  try:
    left, right = window
    left, right = int(left), int(right)
  except (TypeError, ValueError):
    raise WindowedAttentionError(
        f"window={window!r}: pass window=(left, right) with ints >= 0, e.g. (256, 0) for causal"
    ) from None
  if left < 0 or right < 0:
    raise WindowedAttentionError(
        f"window={window!r} has a negative side; pass window=(left, right) with ints >= 0")
  return left, right


def check_inputs(q: jax.Array, k: jax.Array, v: jax.Array, window, segment_ids,
                 scale: float | None) -> Problem:
  """Checks shapes and dtypes; returns the static problem description."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if getattr(x, "ndim", None) != 4:
      raise WindowedAttentionError(
          f"{name} has shape {getattr(x, 'shape', None)}; pass (batch, seq, heads, head_dim)")
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64):
      raise WindowedAttentionError(f"{name} has dtype {x.dtype}; pass float32 or bfloat16")
  batch, seq, heads, head_dim = q.shape
  if k.shape != v.shape:
    raise WindowedAttentionError(f"k {k.shape} and v {v.shape} differ; pass k and v of one shape")
  kb, ks, kv_heads, kd = k.shape
  if (kb, ks, kd) != (batch, seq, head_dim):
    raise WindowedAttentionError(
        f"q {q.shape} and k {k.shape} disagree on batch, seq or head_dim; "
        "pass k, v as (batch, seq, kv_heads, head_dim) matching q")
  if kv_heads == 0 or heads % kv_heads:
    raise WindowedAttentionError(
        f"kv_heads={kv_heads} does not divide heads={heads}; use a kv_heads that divides heads")
  if not q.dtype == k.dtype == v.dtype:
    raise WindowedAttentionError(
        f"q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype} differ; cast them to one dtype")
  if seq == 0:
    raise WindowedAttentionError("seq is 0; pass at least one token")
  if segment_ids is not None:
    if getattr(segment_ids, "shape", None) != (batch, seq):
      raise WindowedAttentionError(
          f"segment_ids has shape {getattr(segment_ids, 'shape', None)}; pass (batch, seq) "
          f"= {(batch, seq)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise WindowedAttentionError(
          f"segment_ids has dtype {segment_ids.dtype}; pass integer segment ids")
  left, right = normalize_window(window)
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  return Problem(batch, seq, heads, kv_heads, head_dim, left, right, float(scale))


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def band_blocks(outer, outer_block: int, inner_block: int, inner_len: int, before: int,
                after: int):
  """Block range of the inner sequence that one outer block can see.

  Outer position i sees inner positions ``i - before .. i + after`` (for the forward pass and
  dq the outer sequence is the queries and (before, after) = (left, right); for dk/dv the outer
  sequence is the keys and (before, after) = (right, left)).

  Works on Python ints and on traced int32 scalars (`outer` may be a program id).

  Returns:
    (lo, full_lo, full_hi, hi): inner blocks [lo, hi) are visible at all; [full_lo, full_hi)
    are fully visible from every position of the outer block and lie wholly inside
    inner_len, so they need no mask. full_lo <= full_hi always; both are clamped into [lo, hi].
  """
  n_inner = cdiv(inner_len, inner_block)
  first = outer * outer_block
  last = first + outer_block - 1
  # Numerators are clamped at 0 first, so truncating division is floor division (kernels
  # lower lax.div, which truncates) and every bound is already >= 0.
  lo = div(_max(first - before, 0), inner_block)
  hi = _min(div(last + after, inner_block) + 1, n_inner)
  # Inner block b is full iff b*B >= last - before and b*B + B - 1 <= first + after (and it
  # lies wholly inside inner_len).
  full_lo = _min(_max(div(_max(last - before, 0) + inner_block - 1, inner_block), lo), hi)
  full_hi = _min(div(first + after + 1, inner_block), inner_len // inner_block, hi)
  full_hi = _max(full_hi, full_lo)
  return lo, full_lo, full_hi, hi


def max_band(outer_block: int, inner_block: int, before: int, after: int, n_inner: int) -> int:
  """Most inner blocks any outer block can see (a static grid extent)."""
  # Span of inner positions is outer_block + before + after; it touches at most this many
  # blocks wherever it starts.
  span = outer_block + before + after
  return max(1, min(n_inner, cdiv(span - 1, inner_block) + 1))


def _is_traced(*xs) -> bool:
  return any(isinstance(x, jax.Array) or hasattr(x, "aval") for x in xs)


def _max(*xs):
  if _is_traced(*xs):
    out = xs[0]
    for x in xs[1:]:
      out = jnp.maximum(out, x)
    return out
  return max(xs)


def _min(*xs):
  if _is_traced(*xs):
    out = xs[0]
    for x in xs[1:]:
      out = jnp.minimum(out, x)
    return out
  return min(xs)


def div(a, b: int):
  """a // b for a >= 0, on Python ints or traced int32 scalars."""
  if _is_traced(a):
    return jax.lax.div(a, jnp.asarray(b, dtype=a.dtype))
  return a // b


def window_mask(q_pos: jax.Array, k_pos: jax.Array, left: int, right: int,
                seq: int) -> jax.Array:
  """True where query position q_pos may see key position k_pos (broadcasting)."""
  diff = k_pos - q_pos
  return (diff >= -left) & (diff <= right) & (k_pos >= 0) & (k_pos < seq)


@dataclasses.dataclass(frozen=True)
class NeighborhoodMask:
  """(q_pos, k_pos) -> bool: the 2-D neighborhood test on raster positions of a grid `width`
  wide, for every implementation (the reference and both Pallas kernels take it as
  `extra_mask`).

  "circle" (CLEAR): dy^2 + dx^2 < radius^2; "square": max(|dy|, |dx|) <= radius. Rows and
  columns come from float arithmetic, (pos + 0.5) / width floored, not integer division:
  Mosaic (TPU) lowers float ops on vectors everywhere, and the +0.5 keeps the quotient half a
  column away from every integer, so it is exact for any grid below 2^22 tokens. Hashable
  (a frozen dataclass), so equal masks reuse one compiled kernel.
  """
  width: int
  radius: float
  shape: str = "circle"

  def __call__(self, q_pos, k_pos):
    def row_col(pos):
      p = pos.astype(jnp.float32)
      row = jnp.floor((p + 0.5) / self.width)
      return row, p - row * self.width
    qy, qx = row_col(q_pos)
    ky, kx = row_col(k_pos)
    dy, dx = ky - qy, kx - qx
    if self.shape == "circle":
      return dy * dy + dx * dx < float(self.radius) ** 2
    return jnp.maximum(jnp.abs(dy), jnp.abs(dx)) <= float(self.radius)
