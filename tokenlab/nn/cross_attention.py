"""Cross-attention to a condition sequence (a time series, text, another stream), written once.

* `CrossAttention`: multi-head attention whose queries come from x (B, L, D) and whose keys
  and values come from a context (B, M, Dc): out = softmax(q k^T / sqrt(d)) v, no causal mask
  and no RoPE (the two sequences do not share positions: give the context its own position
  embedding); an optional `context_mask` (B, M) bool hides padded context entries (True = may
  attend).
* `CrossAttentionBlock`: a pre-norm transformer block with a cross-attention sub-layer
  between self-attention and the MLP (the decoder layer of Vaswani et al. 2017; MUSE's and
  ECHOPulse's conditioned MaskGIT layers):

      x = x + SelfAttn(RMSNorm(x))
      x = x + CrossAttn(RMSNorm(x), context)
      x = x + SwiGLU(RMSNorm(x))

  Self-attention is tokenlab's `MultiHeadAttention` (causal or bidirectional, RoPE optional);
  attention itself is `dot_product_attention` (tokenlab/nn/attention.py).

Shapes: x (batch, length, embed) in and out; context (batch, context_length, context_embed).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.attention import MultiHeadAttention, dot_product_attention
from tokenlab.nn.layers import DenseGeneral, RMSNorm, SwiGLU


class CrossAttention(nn.Module):
  """Queries from x (B, L, D), keys/values from context (B, M, Dc) -> (B, L, D)."""
  num_heads: int
  head_dim: int
  implementation: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               context_mask: jax.Array | None = None) -> jax.Array:
    dense = lambda feats, axes, name: DenseGeneral(feats, axes, param_dtype=self.param_dtype,
                                                   name=name)
    heads = (self.num_heads, self.head_dim)
    q = dense(heads, ("embed", "heads", "head_dim"), "query")(x)
    k = dense(heads, ("embed", "heads", "head_dim"), "key")(context.astype(x.dtype))
    v = dense(heads, ("embed", "heads", "head_dim"), "value")(context.astype(x.dtype))
    mask = None if context_mask is None else context_mask[:, None, None, :].astype(bool)
    out = dot_product_attention(q, k, v, causal=False, mask=mask,
                                implementation=self.implementation)
    return DenseGeneral((x.shape[-1],), ("heads", "head_dim", "embed"), in_dims=2,
                        param_dtype=self.param_dtype, name="out")(out)


class CrossAttentionBlock(nn.Module):
  """Self-attention, cross-attention to `context`, SwiGLU; pre-norm residuals (module doc)."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  causal: bool = False
  use_rope: bool = False
  attention_impl: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               context_mask: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    norm = lambda name: RMSNorm(param_dtype=self.param_dtype, name=name)
    x = x + MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, causal=self.causal,
        implementation=self.attention_impl, use_rope=self.use_rope,
        param_dtype=self.param_dtype, name="attn")(norm("attn_norm")(x), positions=positions)
    x = x + CrossAttention(self.num_heads, self.head_dim, implementation=self.attention_impl,
                           param_dtype=self.param_dtype, name="cross")(
                               norm("cross_norm")(x), context, context_mask)
    return x + SwiGLU(self.mlp_dim, param_dtype=self.param_dtype, name="mlp")(
        norm("mlp_norm")(x))
