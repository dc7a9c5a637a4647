"""Windowed (sliding-window) attention and 2-D neighborhood attention.

One public function dispatches by the platform compiled for to a Pallas kernel (GPU: Triton
lowering, TPU: Mosaic), to cuDNN's sliding-window flash attention (GPU default while
tokenlab's Triton kernel is unmeasured on hardware) or to the blocked jax.numpy reference (CPU,
and the source of truth). All cost O(seq * window) time and memory; none builds a seq x seq
array.
"""

from __future__ import annotations

import inspect
import math
import sys
import types

import jax
import jax.numpy as jnp

from tokenlab.kernels._interpret import resolve_interpret
from tokenlab.kernels.windowed_attention import _common
from tokenlab.kernels.windowed_attention import reference
from tokenlab.kernels.windowed_attention._common import WindowedAttentionError

__all__ = ["windowed_attention", "neighborhood_attention_2d", "WindowedAttentionError"]


def cudnn_accepts(q: jax.Array, window: int | tuple[int, int],
                  segment_ids: jax.Array | None) -> bool:
  """Whether cuDNN's sliding-window flash attention takes this call (checked statically).

  cuDNN's window is left-only (causal) and its kernels take bfloat16/float16 with a head dim
  that is a multiple of 8 and at most 128 (256 needs Hopper, unknown ahead of time). Segment
  ids would reach cuDNN as a dense (seq x seq) bias; tokenlab's own kernel keeps them O(N*W).
  """
  left, right = (window, window) if isinstance(window, int) else window
  return (right == 0 and segment_ids is None
          and jnp.dtype(q.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
          and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128)


def default_implementation(q: jax.Array, window: int | tuple[int, int],
                           segment_ids: jax.Array | None = None,
                           platform: str | None = None) -> str:
  """The implementation `implementation=None` runs, for the platform being compiled for.

  TPU: "pallas_tpu". GPU: "cudnn" (jax.nn.dot_product_attention's local window) where cuDNN
  takes the call, else "pallas_gpu": tokenlab's Triton kernel has not been measured faster
  than cuDNN on hardware yet, so it is not the default (name it to use it). Elsewhere:
  "reference". `platform` defaults to `tokenlab.kernels._platform.target_platform()` (the
  current mesh's devices, so ahead-of-time compiles for a TPU from a CPU host get the TPU's).
  """
  from tokenlab.kernels._platform import target_platform
  platform = platform or target_platform()
  if platform == "gpu":
    return "cudnn" if cudnn_accepts(q, window, segment_ids) else "pallas_gpu"
  if platform == "tpu":
    return "pallas_tpu"
  return "reference"


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                       window: int | tuple[int, int],
                       segment_ids: jax.Array | None = None, scale: float | None = None,
                       implementation: str | None = None,
                       interpret: bool | None = None) -> jax.Array:
  """Sliding-window attention, O(seq * window) in time and memory.

  Query i attends to key j iff ``i - left <= j <= i + right`` and, with `segment_ids`, both
  lie in one segment. ``right = 0`` is causal. Same semantics as
  ``jax.nn.dot_product_attention(q, k, v, local_window_size=(left, right))``.

  Args:
    q: (batch, seq, heads, head_dim), float32 or bfloat16.
    k, v: (batch, seq, kv_heads, head_dim); kv_heads divides heads (grouped-query attention).
    window: (left, right), ints >= 0 (an int w means (w, w)); may exceed seq.
    segment_ids: optional (batch, seq) ints for packed sequences.
    scale: logit scale; default 1/sqrt(head_dim).
    implementation: None (the best for the platform compiled for, see
      `default_implementation`: Pallas on TPU, cuDNN's local window on GPU where it takes the
      call, the reference elsewhere), "reference", "pallas_gpu", "pallas_tpu" or "cudnn"
      (`jax.nn.dot_product_attention(..., local_window_size=(left, 0))`). A named Pallas
      implementation is compiled (Mosaic/Triton) for the platform the program is lowered
      for, also ahead of time from a CPU host (`jax.jit(f).lower(...).compile()` for a TPU
      topology).
    interpret: run a Pallas implementation in the Pallas interpreter (CPU tests). Default:
      only if TOKENLAB_PALLAS_INTERPRET=1 (see tokenlab/kernels/_interpret.py).

  Returns:
    (batch, seq, heads, head_dim) in q's dtype. Softmax and accumulation run in float32.
    Differentiable in q, k and v.
  """
  if implementation is None:
    implementation = default_implementation(q, window, segment_ids)
  interpret = resolve_interpret(interpret)
  if implementation == "reference":
    return reference.windowed_attention(q, k, v, window=window, segment_ids=segment_ids,
                                        scale=scale)
  if implementation == "pallas_gpu":
    from tokenlab.kernels.windowed_attention import pallas_gpu
    return pallas_gpu.windowed_attention(q, k, v, window=window, segment_ids=segment_ids,
                                         scale=scale, interpret=interpret)
  if implementation == "pallas_tpu":
    from tokenlab.kernels.windowed_attention import pallas_tpu
    return pallas_tpu.windowed_attention(q, k, v, window=window, segment_ids=segment_ids,
                                         scale=scale, interpret=interpret)
  if implementation == "cudnn":
    if not cudnn_accepts(q, window, segment_ids):
      raise WindowedAttentionError(
          "implementation='cudnn' takes left-only (causal) windows, no segment_ids, bfloat16 "
          f"or float16 and head_dim a multiple of 8 up to 128; got window={window}, dtype "
          f"{q.dtype}, head_dim {q.shape[-1]}, segment_ids {segment_ids is not None}; use "
          "implementation='pallas_gpu'")
    left = window if isinstance(window, int) else window[0]
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True,
                                        local_window_size=(left, 0), implementation="cudnn")
  raise WindowedAttentionError(
      f"implementation={implementation!r}; pass None or one of "
      f"{', '.join(repr(i) for i in _common.IMPLEMENTATIONS)}")


def neighborhood_reach(radius: float, shape: str) -> int:
  """Largest |dy| (and |dx|) a query can reach for this radius and shape."""
  if shape == "square":
    return int(math.floor(radius))
  # circle: dy^2 < r^2 -> |dy| < r -> |dy| <= ceil(r) - 1.
  return int(math.ceil(radius)) - 1


def neighborhood_mask_fn(width: int, radius: float, shape: str) -> _common.NeighborhoodMask:
  """(q_pos, k_pos) -> bool: the 2-D neighborhood test on raster positions (one hashable
  `_common.NeighborhoodMask`, the same for the reference and the Pallas kernels)."""
  return _common.NeighborhoodMask(int(width), float(radius), shape)


def neighborhood_attention_2d(q: jax.Array, k: jax.Array, v: jax.Array, *, height: int,
                              width: int, radius: float, shape: str = "circle",
                              scale: float | None = None, implementation: str | None = None,
                              interpret: bool | None = None, **kernel_kwargs) -> jax.Array:
  """Local attention on a height x width grid of tokens in raster order.

  The query at (y, x) attends to keys with ``dy^2 + dx^2 < radius^2`` (``"circle"``, CLEAR's
  convolution-like local attention) or ``max(|dy|, |dx|) <= radius`` (``"square"``,
  neighborhood attention), without wrapping around the edges.

  In raster order the neighborhood lies inside the 1-D band ``|i - j| <= reach * (width +
  1)``, and the 2-D test is an extra mask on that band, so cost is O(height * width * reach *
  width) rather than O((height * width)^2). `implementation`: None or "reference" (the
  blocked jnp reference, the default on every platform), "pallas_tpu" or "pallas_gpu" (the
  windowed Pallas kernels with the 2-D test applied in every tile they visit; tested in
  interpret mode and lowered for both backends in tests, not yet measured on hardware, so not
  the default); `interpret` and `kernel_kwargs` (block_sizes, poison, ...) go to the kernel.

  Args:
    q: (batch, height*width, heads, head_dim).
    k, v: (batch, height*width, kv_heads, head_dim).
    height, width: grid size; height * width must equal seq.
    radius: > 0 for "circle", >= 0 for "square".
    shape: "circle" or "square".
    scale: logit scale; default 1/sqrt(head_dim).

  Returns:
    (batch, height*width, heads, head_dim) in q's dtype.
  """
  if shape not in ("circle", "square"):
    raise WindowedAttentionError(f"shape={shape!r}; pass shape='circle' or shape='square'")
  if int(height) != height or int(width) != width or height < 1 or width < 1:
    raise WindowedAttentionError(f"height={height}, width={width}; pass positive ints")
  if getattr(q, "ndim", None) == 4 and q.shape[1] != height * width:
    raise WindowedAttentionError(
        f"q has seq {q.shape[1]} but height*width = {height * width}; pass tokens of a "
        f"{height}x{width} grid in raster order")
  if not (radius > 0 if shape == "circle" else radius >= 0):
    raise WindowedAttentionError(
        f"radius={radius} sees no key for shape={shape!r}; pass radius > 0 (circle) or >= 0 "
        "(square)")
  reach = neighborhood_reach(radius, shape)
  band = reach * width + reach
  mask = neighborhood_mask_fn(width, radius, shape)
  if implementation in (None, "reference"):
    return reference.windowed_attention(q, k, v, window=(band, band), scale=scale,
                                        extra_mask=mask, **kernel_kwargs)
  if implementation in ("pallas_gpu", "pallas_tpu"):
    import importlib
    kernel = importlib.import_module(f"tokenlab.kernels.windowed_attention.{implementation}")
    return kernel.windowed_attention(q, k, v, window=(band, band), scale=scale,
                                     interpret=resolve_interpret(interpret), extra_mask=mask,
                                     **kernel_kwargs)
  raise WindowedAttentionError(
      f"implementation={implementation!r} for neighborhood attention; pass None, "
      "'reference', 'pallas_gpu' or 'pallas_tpu'")


class _CallablePackage(types.ModuleType):
  """This package, callable as `windowed_attention`.

  `tokenlab.kernels` exports the function `windowed_attention` lazily, but importing this
  subpackage (same name) makes Python bind the *package* to `tokenlab.kernels.windowed_attention`,
  shadowing the lazy export. Calling the package forwards to the function, so
  `from tokenlab.kernels import windowed_attention` works whatever was imported first.
  """

  def __call__(self, *args, **kwargs):
    return windowed_attention(*args, **kwargs)

  @property
  def __signature__(self):
    return inspect.signature(windowed_attention)


sys.modules[__name__].__class__ = _CallablePackage
