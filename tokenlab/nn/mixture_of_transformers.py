"""Mixture-of-Transformers (MoT) routing over an interleaved multi-modal sequence.

Liang et al. 2024, "Mixture-of-Transformers: A Sparse and Scalable Architecture for
Multi-Modal Foundation Models" (arXiv 2411.04996), as used by TV2TV (arXiv 2512.05103) for
interleaved text and video: every non-embedding parameter of a transformer layer (the norms,
the query / key / value and output projections, the feed-forward network) exists once per
modality, and each token goes through the weights of its own modality, selected by a modality
id; attention is one global self-attention over the whole interleaved sequence, so text and
video tokens read each other through the shared attention scores.

- `interleaved_mask(block_ids, visible)`: the block-causal mask of an interleaved sequence.
  Every token carries a block id; a token sees its whole block (bidirectional: a video chunk)
  and every *visible* token of an earlier block. Text is causal by giving each text token its
  own block; tokens that nothing later may read (padding, the noisy copy of a chunk under
  denoising) are marked not visible.
- `route(modality, fns, *args)`: runs each modality's function and keeps, per token, the
  output of its own modality's (the selection is a `where`, so a token's output and its
  gradient never involve another modality's weights).
- `MoTBlock` / `MoTStack`: pre-norm blocks (RMSNorm, attention, SwiGLU, as
  `tokenlab.nn.transformer.TransformerBlock`) with those parts per modality; the attention
  itself is `tokenlab.nn.attention.dot_product_attention` with the mask above.

With a static layout (the same modality per position in every row, a numpy (L,) array) each
modality's weights run only on its own tokens (gather, apply, scatter: one dense layer's
FLOPs, as the paper); with per-row modality ids (a traced (B, L) array) every modality's
weights run on every token and a `where` keeps each token's own (M times the projection
FLOPs, the same outputs).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.attention import dot_product_attention
from tokenlab.nn.layers import DenseGeneral, RMSNorm, SwiGLU, rope


def interleaved_mask(block_ids: jax.Array | np.ndarray,
                     visible: jax.Array | np.ndarray | None = None) -> jax.Array:
  """Block-causal attention mask of an interleaved sequence.

  Args:
    block_ids: (L,) or (B, L) int: the block of each token (a video chunk shares one id; each
      text token has its own, increasing along the text).
    visible: optional (L,) or (B, L) bool: False for tokens no *other block* may read
      (padding, a chunk's noisy copy); a token always sees its own block.
  Returns:
    bool (B or 1, 1, L, L): [.., i, j] True when query i may attend to key j, i.e.
    block_j == block_i, or block_j < block_i and visible_j.
  """
  ids = jnp.asarray(block_ids)
  ids = ids[None] if ids.ndim == 1 else ids
  earlier = ids[:, None, :] < ids[:, :, None]
  if visible is not None:
    vis = jnp.asarray(visible, bool)
    vis = vis[None] if vis.ndim == 1 else vis
    earlier = jnp.logical_and(earlier, vis[:, None, :])
  return jnp.logical_or(earlier, ids[:, None, :] == ids[:, :, None])[:, None]


def route(modality: jax.Array | np.ndarray, fns: Sequence[Callable[..., jax.Array]],
          *args: jax.Array) -> jax.Array:
  """Per-token modality routing: token (b, l) gets fns[modality[b, l]](*args) at (b, l).

  Args:
    modality: (B, L) or (L,) int in 0..len(fns)-1 (a jax array: every fn runs on every token and
      a `where` keeps each token's own, M times the FLOPs), or a static numpy (L,) layout
      shared by all rows (each fn runs only on its modality's tokens, gathered along the
      length axis and scattered back: the FLOPs of one dense layer, as the paper).
    fns: one function per modality, each (*args (B, L', ...)) -> (B, L', ...), acting on
      every token independently.
    args: (B, L, ...) arrays.
  Returns:
    (B, L, ...).
  """
  if isinstance(modality, np.ndarray):
    if modality.ndim != 1:
      raise ValueError(f"a static modality layout is (L,), got shape {modality.shape}")
    out = None
    for m, fn in enumerate(fns):
      idx = np.flatnonzero(modality == m)   # may be empty: the fn still creates its params
      y = fn(*(a[:, idx] for a in args))
      if out is None:
        out = jnp.zeros(args[0].shape[:2] + y.shape[2:], y.dtype)
      out = out.at[:, idx].set(y)
    return out
  modality = jnp.broadcast_to(modality, args[0].shape[:2])
  out = fns[0](*args)
  for m, fn in enumerate(fns[1:], start=1):
    y = fn(*args)
    sel = jnp.reshape(modality == m, modality.shape + (1,) * (y.ndim - modality.ndim))
    out = jnp.where(sel, y, out)
  return out


class MoTBlock(nn.Module):
  """x + Attn(RMSNorm_m(x)); x + SwiGLU_m(RMSNorm_m(x)), m the token's modality.

  Per modality (submodules prefixed by the modality's name): attn_norm, query, key, value,
  out, mlp_norm, mlp. One global attention over the sequence with `mask`.
  (B, L, D) in and out.
  """
  modalities: tuple[str, ...]
  num_heads: int
  head_dim: int
  mlp_dim: int
  use_rope: bool = True
  rope_theta: float = 10000.0
  attention_impl: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, modality: jax.Array, mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    """x (B, L, D); modality (B, L) int or a static numpy (L,) layout (`route`); mask bool
    broadcastable to (B, 1, L, L) (True = may attend, e.g. `interleaved_mask`); positions
    (B, L) int for RoPE."""
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    d, pd = x.shape[-1], self.param_dtype
    heads = (self.num_heads, self.head_dim)

    # Two routed stages per layer (each token gathered once per stage): the pre-attention
    # norm and q / k / v projections, then the output projection and the MLP half.
    def qkv(name):
      norm = RMSNorm(param_dtype=pd, name=f"{name}_attn_norm")
      proj = [DenseGeneral(heads, ("embed", "heads", "head_dim"), param_dtype=pd,
                           name=f"{name}_{n}") for n in ("query", "key", "value")]
      return lambda u: jnp.stack([p(norm(u)) for p in proj], axis=2)   # (B, L', 3, H, Dh)

    def post(name):
      out = DenseGeneral((d,), ("heads", "head_dim", "embed"), in_dims=2, param_dtype=pd,
                         name=f"{name}_out")
      norm = RMSNorm(param_dtype=pd, name=f"{name}_mlp_norm")
      mlp = SwiGLU(self.mlp_dim, param_dtype=pd, name=f"{name}_mlp")
      def fn(u, att):
        u = u + out(att)
        return u + mlp(norm(u))
      return fn

    q, k, v = jnp.moveaxis(route(modality, [qkv(n) for n in self.modalities], x), 2, 0)
    if self.use_rope:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
      q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
    att = dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
    return route(modality, [post(n) for n in self.modalities], x, att)


class MoTStack(nn.Module):
  """`num_layers` MoT blocks, then a final RMSNorm per modality. (B, L, D) in and out."""
  modalities: tuple[str, ...]
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  use_rope: bool = True
  attention_impl: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, modality: jax.Array, mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    for i in range(self.num_layers):
      x = MoTBlock(self.modalities, self.num_heads, self.head_dim, self.mlp_dim,
                   use_rope=self.use_rope, attention_impl=self.attention_impl,
                   param_dtype=self.param_dtype, name=f"layer_{i}")(x, modality, mask,
                                                                    positions)
    norms = [RMSNorm(param_dtype=self.param_dtype, name=f"{name}_final_norm")
             for name in self.modalities]
    return route(modality, norms, x)
