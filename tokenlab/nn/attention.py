"""Attention, written once: the function every method calls and a multi-head layer.

`dot_product_attention` chooses between dense attention (causal / segment masks and an
optional additive bias), windowed attention (``tokenlab.kernels.windowed_attention``, O(N*W))
when a window is set, and 2-D neighborhood attention on an image grid
(``tokenlab.kernels.neighborhood_attention_2d``) when a neighborhood is set.

Which kernel runs (`implementation`, the config key `model.attention_impl`) is chosen by the
platform the program is compiled for (`tokenlab.kernels._platform.target_platform`: the
current mesh's devices, so `tokenlab plan --topology` from a CPU host gets the TPU's choice):

* "auto" (or None): dense attention runs splash attention on TPU and cuDNN flash attention
  on GPU where the call fits them (`splash_unfit`, `cudnn_unfit`), else XLA; windowed
  attention runs "pallas_tpu" on TPU, "cudnn" (cuDNN's local window) on GPU where it fits,
  else "pallas_gpu", and the jnp reference elsewhere (`windowed_implementation`).
* "xla": XLA (``jax.nn.dot_product_attention``); windowed: the jnp reference.
* "splash": splash attention (an AttentionError if it cannot run the call); windowed:
  "pallas_tpu".
* "cudnn": cuDNN, dense and windowed (an error if it cannot run the call).
* "reference", "pallas_tpu", "pallas_gpu": that windowed kernel; dense attention runs XLA.

Splash (``jax.experimental.pallas.ops.tpu.splash_attention``) and the Pallas kernels are
single-device programs; under a mesh they run per shard (`_per_shard`).

`MultiHeadAttention(decode=True)` keeps a key/value cache in the Flax "cache" collection for
one-token-per-step autoregressive decoding (driven by tokenlab/nn/decode.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.errors import TokenlabError
from tokenlab.nn.layers import DenseGeneral, rope


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          causal: bool = False,
                          window: tuple[int, int] | None = None,
                          segment_ids: jax.Array | None = None,
                          bias: jax.Array | None = None,
                          mask: jax.Array | None = None,
                          implementation: str | None = None,
                          neighborhood: tuple[int, int, float, str] | None = None) -> jax.Array:
  """Scaled dot-product attention.

  Args:
    q: (batch, q_len, heads, head_dim); k, v: (batch, kv_len, kv_heads, head_dim), kv_heads
      dividing heads (grouped-query attention).
    causal: query i sees keys j <= i.
    window: (left, right): query i sees keys i-left <= j <= i+right (windowed kernel).
      Combined with `causal`, right is forced to 0.
    segment_ids: (batch, len) int; tokens attend only within their segment (packed rows).
    bias: additive logits bias broadcastable to (batch, heads, q_len, kv_len), e.g. log
      token sizes for ToMe's proportional attention. Dense path only.
    mask: bool, broadcastable to (batch, heads, q_len, kv_len); True = may attend.
    implementation: which kernel runs, see the module docstring (None = "auto": the best
      for the platform compiled for that takes the call).
    neighborhood: (height, width, radius, shape): tokens are a height x width grid in raster
      order and query (y, x) sees keys with dy^2 + dx^2 < radius^2 ("circle") or
      max(|dy|, |dx|) <= radius ("square"); see tokenlab.kernels.neighborhood_attention_2d.
      Takes no other mask, bias, window or segment ids.
  Returns:
    (batch, q_len, heads, head_dim) in q's dtype.
  """
  if neighborhood is not None:
    if causal or window is not None or segment_ids is not None or bias is not None \
        or mask is not None:
      raise ValueError("neighborhood attention takes no causal flag, window, segment_ids, "
                       "bias or mask")
    from tokenlab.kernels import neighborhood_attention_2d
    height, width, radius, shape = neighborhood
    fn = lambda q, k, v, _: neighborhood_attention_2d(q, k, v, height=height, width=width,
                                                      radius=radius, shape=shape)
    return _per_shard(fn, q, k, v, None)
  if window is not None:
    if bias is not None or mask is not None:
      raise ValueError("windowed attention takes no bias or mask; use segment_ids")
    from tokenlab.kernels import windowed_attention
    left, right = window
    window = (left, 0 if causal else right)
    kernel = windowed_implementation(implementation, q, window, segment_ids)
    fn = lambda q, k, v, seg: windowed_attention(q, k, v, window=window, segment_ids=seg,
                                                 implementation=kernel)
    return _per_shard(fn, q, k, v, segment_ids)
  kernel = dense_implementation(implementation, q, k, causal=causal, bias=bias, mask=mask)
  if kernel == "splash":
    return _per_shard(lambda q, k, v, seg: _splash(q, k, v, seg, causal=causal),
                      q, k, v, segment_ids)
  if kernel == "cudnn":
    fn = lambda q, k, v, seg: jax.nn.dot_product_attention(
        q, k, v, mask=None if seg is None else _segment_mask(seg), is_causal=causal,
        implementation="cudnn")
    return _per_shard(fn, q, k, v, segment_ids)
  if segment_ids is not None:
    seg = _segment_mask(segment_ids)
    mask = seg if mask is None else jnp.logical_and(mask, seg)
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal)


IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn", "reference", "pallas_tpu", "pallas_gpu")
SPLASH_BLOCKS = (512, 256, 128)  # splash's q/kv block: the largest of these dividing seq


class AttentionError(TokenlabError, ValueError):
  """An attention implementation that cannot run this call; the message names the fix."""


def _segment_mask(segment_ids: jax.Array) -> jax.Array:
  return segment_ids[:, None, :, None] == segment_ids[:, None, None, :]


def _check_name(implementation: str | None) -> str:
  impl = implementation or "auto"
  if impl not in IMPLEMENTATIONS:
    raise AttentionError(f"attention implementation {impl!r}; pass one of "
                         f"{', '.join(repr(i) for i in IMPLEMENTATIONS)} (model.attention_impl)")
  return impl


def splash_unfit(q: jax.Array, k: jax.Array, *, causal: bool = True, bias=None,
                 mask=None) -> str | None:
  """Why splash attention cannot run this dense call, or None if it can."""
  del causal  # causal or not, both are splash masks
  if bias is not None or mask is not None:
    return "an additive bias or explicit mask (splash takes causal and segment masks)"
  if q.shape[1] != k.shape[1]:
    return f"query length {q.shape[1]} != key length {k.shape[1]}"
  if q.shape[1] % SPLASH_BLOCKS[-1]:
    return f"sequence length {q.shape[1]} is not a multiple of {SPLASH_BLOCKS[-1]} (its block)"
  if jnp.dtype(q.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    return f"dtype {q.dtype} (splash takes float32 or bfloat16)"
  return None


def cudnn_unfit(q: jax.Array, k: jax.Array, *, causal: bool = True, bias=None,
                mask=None) -> str | None:
  """Why cuDNN flash attention cannot run this dense call (checked statically), or None.

  bfloat16/float16 only, head dim a multiple of 8 and at most 128 (256 needs Hopper, which
  cannot be known ahead of time); no additive bias or explicit mask (segment ids are fine).
  """
  if bias is not None or mask is not None:
    return "an additive bias or explicit mask"
  if causal and q.shape[1] != k.shape[1]:
    return f"causal with query length {q.shape[1]} != key length {k.shape[1]}"
  if jnp.dtype(q.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"dtype {q.dtype} (cuDNN takes bfloat16 or float16)"
  if q.shape[-1] % 8 or q.shape[-1] > 128:
    return f"head_dim {q.shape[-1]} (cuDNN takes a multiple of 8 up to 128)"
  return None


def dense_implementation(implementation: str | None, q: jax.Array, k: jax.Array, *,
                         causal: bool = True, bias=None, mask=None,
                         platform: str | None = None) -> str:
  """"splash", "cudnn" or "xla": what dense attention runs for this call.

  "auto" picks splash on TPU and cuDNN on GPU where the call fits them, else XLA; `platform`
  defaults to the platform being compiled for (`target_platform`). A named "splash" or
  "cudnn" that cannot run the call raises AttentionError with the reason.
  """
  from tokenlab.kernels._platform import target_platform
  impl = _check_name(implementation)
  unfit = {"splash": splash_unfit, "cudnn": cudnn_unfit}
  kw = dict(causal=causal, bias=bias, mask=mask)
  if impl in unfit:
    why = unfit[impl](q, k, **kw)
    if why:
      raise AttentionError(f"attention implementation {impl!r} cannot run this call: {why}; "
                           "use 'auto' (falls back to XLA) or 'xla'")
    return impl
  if impl != "auto":
    return "xla"
  platform = platform or target_platform()
  preferred = {"tpu": "splash", "gpu": "cudnn"}.get(platform)
  if preferred and unfit[preferred](q, k, **kw) is None:
    return preferred
  return "xla"


def windowed_implementation(implementation: str | None, q: jax.Array,
                            window: tuple[int, int], segment_ids: jax.Array | None = None,
                            platform: str | None = None) -> str:
  """The `tokenlab.kernels.windowed_attention` implementation a windowed call runs."""
  from tokenlab.kernels.windowed_attention import default_implementation
  impl = _check_name(implementation)
  if impl == "auto":
    return default_implementation(q, window, segment_ids, platform)
  return {"xla": "reference", "splash": "pallas_tpu"}.get(impl, impl)


def _splash(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
            causal: bool) -> jax.Array:
  """Splash attention on one device's (batch, seq, heads, head_dim) block."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  from tokenlab.kernels._interpret import resolve_interpret
  _, seq, heads, head_dim = q.shape
  block = next(b for b in SPLASH_BLOCKS if seq % b == 0)
  one = sm.CausalMask((seq, seq)) if causal else sm.FullMask((seq, seq))
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  kernel = sk.make_splash_mha(sm.MultiHeadMask((one,) * heads), block_sizes=sizes,
                              head_shards=1, q_seq_shards=1,
                              interpret=resolve_interpret(None))
  # Splash takes (heads, seq, head_dim) per example and does not scale the logits.
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  q = heads_major(q * jnp.asarray(head_dim ** -0.5, q.dtype))
  k, v = heads_major(k), heads_major(v)
  if segment_ids is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    seg = sk.SegmentIds(q=segment_ids, kv=segment_ids)
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(q, k, v, seg)
  return heads_major(out)


def _divisible(spec, shape: tuple[int, ...], mesh) -> "jax.sharding.PartitionSpec":
  """`spec` with every axis whose size its mesh axes do not divide replicated instead.

  A batch of 1 (sampling one sequence, initialising from one example) on a 4-device data
  axis cannot be split; each device then runs the kernel on the whole (small) array.
  """
  from jax.sharding import PartitionSpec as P
  out = []
  for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    ways = 1
    for name in names:
      ways *= mesh.shape[name]
    out.append(axes if size % ways == 0 else None)
  return P(*out)


def _per_shard(fn, q: jax.Array, k: jax.Array, v: jax.Array,
               segment_ids: jax.Array | None) -> jax.Array:
  """Runs a per-example attention kernel on each device's shard under the current mesh.

  Pallas kernels are single-device programs: under a mesh they must see local blocks, so they
  run inside shard_map over the batch and head axes the logical rules assign (sequences are
  not split). Without a mesh (or on a 1-device mesh) `fn` is called directly.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(q, k, v, segment_ids)
  from jax.sharding import PartitionSpec as P
  q_spec = _divisible(nn.logical_to_mesh_axes(("batch", None, "heads", None)), q.shape, mesh)
  kv_spec = _divisible(nn.logical_to_mesh_axes(("batch", None, "kv_heads", None)), k.shape,
                       mesh)
  if q_spec[0] != kv_spec[0]:   # batch split the same way for q and kv, or not at all
    q_spec = P(None, *q_spec[1:])
    kv_spec = P(None, *kv_spec[1:])
  if segment_ids is None:
    return jax.shard_map(lambda q, k, v: fn(q, k, v, None), mesh=mesh,
                         in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v)
  seg_spec = P(q_spec[0], None)
  return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)


class MultiHeadAttention(nn.Module):
  """Multi-head (grouped-query) self-attention with RoPE.

  Input (batch, length, embed) -> (batch, length, embed).

  With `decode=True` (causal only) the layer keeps, in the "cache" collection,
  `cached_key` / `cached_value` (batch, max_len, kv_heads, head_dim) and `cache_index` (), the
  number of positions written so far (shared by all rows). The first call, under `init`,
  creates a zero cache whose max_len is that call's length and attends normally; every later
  call (apply with mutable=["cache"]) takes the next `length` tokens, applies RoPE at their
  true positions cache_index + 0..length-1, writes their keys/values into the cache, and
  attends densely over the cache with a mask: keys at positions <= the query's, and, with a
  window (left, _), >= the query's position - left (the same keys the windowed kernel sees).
  Positions, segment ids and bias are not taken in decode mode.
  """
  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None
  causal: bool = True
  window: tuple[int, int] | None = None
  neighborhood: tuple[int, int, float, str] | None = None  # see dot_product_attention
  implementation: str | None = None
  use_rope: bool = True
  rope_theta: float = 10000.0
  param_dtype: Any = jnp.float32
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None,
               bias: jax.Array | None = None) -> jax.Array:
    kv_heads = self.num_kv_heads or self.num_heads
    dense = lambda feats, axes, name: DenseGeneral(feats, axes, param_dtype=self.param_dtype,
                                                   name=name)
    q = dense((self.num_heads, self.head_dim), ("embed", "heads", "head_dim"), "query")(x)
    k = dense((kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"), "key")(x)
    v = dense((kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"), "value")(x)
    if self.decode:
      if positions is not None or segment_ids is not None or bias is not None:
        raise ValueError("decode mode takes no positions, segment_ids or bias (positions "
                         "come from the cache index)")
      out = self._cached_attention(q, k, v)
      return DenseGeneral((x.shape[-1],), ("heads", "head_dim", "embed"), in_dims=2,
                          param_dtype=self.param_dtype, name="out")(out)
    if self.use_rope:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
      q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    out = dot_product_attention(q, k, v, causal=self.causal, window=self.window,
                                segment_ids=segment_ids, bias=bias,
                                implementation=self.implementation,
                                neighborhood=self.neighborhood)
    return DenseGeneral((x.shape[-1],), ("heads", "head_dim", "embed"), in_dims=2,
                        param_dtype=self.param_dtype, name="out")(out)

  def _cached_attention(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """q (batch, n, heads, head_dim), k/v (batch, n, kv_heads, head_dim) of the next n tokens
    (before RoPE) -> (batch, n, heads, head_dim); updates the cache (see the class docstring)."""
    if not self.causal:
      raise ValueError("decode mode needs causal attention")
    batch, n = q.shape[:2]
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    max_len = cached_k.value.shape[1]
    if n > max_len:
      raise ValueError(f"decode step of {n} tokens exceeds the cache length {max_len}")
    start = index.value if initialized else jnp.zeros((), jnp.int32)
    q_pos = start + jnp.arange(n)                                          # (n,)
    if self.use_rope:
      pos = jnp.broadcast_to(q_pos, (batch, n))
      q, k = rope(q, pos, self.rope_theta), rope(k, pos, self.rope_theta)
    if initialized:
      # Keys/values are cached after RoPE, so each is rotated once, at its own position.
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
      index.value = start + n
      k, v = cached_k.value, cached_v.value
      k_pos = jnp.arange(max_len)
    else:  # init: the cache is being created; attend over this call's own tokens
      k_pos = q_pos
    mask = k_pos[None, :] <= q_pos[:, None]                               # (n, kv_len)
    if self.window is not None:
      mask = jnp.logical_and(mask, k_pos[None, :] >= q_pos[:, None] - self.window[0])
    return jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
