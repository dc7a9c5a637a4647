"""Attention, written once: the function every method calls and a multi-head layer.

`dot_product_attention` chooses between dense attention (``jax.nn.dot_product_attention``,
with causal / segment masks and an optional additive bias) and windowed attention
(``tokenlab.kernels.windowed_attention``, O(N*W)) when a window is set.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.layers import DenseGeneral, rope


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          causal: bool = False,
                          window: tuple[int, int] | None = None,
                          segment_ids: jax.Array | None = None,
                          bias: jax.Array | None = None,
                          mask: jax.Array | None = None,
                          implementation: str | None = None) -> jax.Array:
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
    implementation: for the windowed kernel (None = best for the backend).
  Returns:
    (batch, q_len, heads, head_dim) in q's dtype.
  """
  if window is not None:
    if bias is not None or mask is not None:
      raise ValueError("windowed attention takes no bias or mask; use segment_ids")
    from tokenlab.kernels import windowed_attention
    left, right = window
    fn = lambda q, k, v, seg: windowed_attention(q, k, v, window=(left, 0 if causal else right),
                                                 segment_ids=seg,
                                                 implementation=implementation)
    return _per_shard(fn, q, k, v, segment_ids)
  if segment_ids is not None:
    seg = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    mask = seg if mask is None else jnp.logical_and(mask, seg)
  if bias is not None:
    bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal)


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
  q_spec = nn.logical_to_mesh_axes(("batch", None, "heads", None))
  kv_spec = nn.logical_to_mesh_axes(("batch", None, "kv_heads", None))
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
  """
  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None
  causal: bool = True
  window: tuple[int, int] | None = None
  implementation: str | None = None
  use_rope: bool = True
  rope_theta: float = 10000.0
  param_dtype: Any = jnp.float32

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
    if self.use_rope:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
      q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    out = dot_product_attention(q, k, v, causal=self.causal, window=self.window,
                                segment_ids=segment_ids, bias=bias,
                                implementation=self.implementation)
    return DenseGeneral((x.shape[-1],), ("heads", "head_dim", "embed"), in_dims=2,
                        param_dtype=self.param_dtype, name="out")(out)
