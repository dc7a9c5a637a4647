"""Pre-norm transformer blocks and a stack of them (optionally scanned and rematerialised)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.attention import MultiHeadAttention
from tokenlab.nn.layers import RMSNorm, SwiGLU

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class TransformerBlock(nn.Module):
  """x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x)). (batch, length, embed) in and out."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: int | None = None
  causal: bool = True
  window: tuple[int, int] | None = None
  neighborhood: tuple[int, int, float, str] | None = None  # 2-D local attention (attention.py)
  attention_impl: str | None = None
  use_rope: bool = True
  rope_theta: float = 10000.0
  param_dtype: Any = jnp.float32
  decode: bool = False  # key/value cache for one-token steps (see MultiHeadAttention)

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = RMSNorm(param_dtype=self.param_dtype, name="attn_norm")(x)
    x = x + MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
        causal=self.causal, window=self.window, neighborhood=self.neighborhood,
        implementation=self.attention_impl, use_rope=self.use_rope, rope_theta=self.rope_theta,
        param_dtype=self.param_dtype, decode=self.decode,
        name="attn")(h, positions=positions, segment_ids=segment_ids)
    h = RMSNorm(param_dtype=self.param_dtype, name="mlp_norm")(x)
    return x + SwiGLU(self.mlp_dim, param_dtype=self.param_dtype, name="mlp")(h)


class TransformerStack(nn.Module):
  """`num_layers` blocks followed by a final norm.

  With `scan=True` the layers are one `nn.scan` (parameters stacked on a leading `layers`
  axis): compile time stays flat in depth, which matters for the 1b-size configs.

  With `decode=True` every block's attention keeps a key/value cache (the "cache" collection;
  see MultiHeadAttention and tokenlab/nn/decode.py). Under scan the cache is scanned like the
  parameters (stacked on a leading layers axis); remat is skipped (nothing is differentiated).
  The parameters are the same with and without decode.
  """
  num_layers: int
  block: dict  # TransformerBlock keyword arguments
  scan: bool = False
  remat: str = "none"
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat='{self.remat}' unknown; use one of {sorted(REMAT_POLICIES)}")
    block_cls, block, variable_axes = TransformerBlock, self.block, {"params": 0}
    if self.decode:
      block, variable_axes = dict(block, decode=True), {"params": 0, "cache": 0}
    elif self.remat != "none":
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat],
                           prevent_cse=not self.scan)
    if self.scan:
      scanned = nn.scan(_ScanAdapter, variable_axes=variable_axes, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(block_cls=block_cls, block=block, name="layers")(
          x, positions, segment_ids)
    else:
      for i in range(self.num_layers):
        x = block_cls(**block, name=f"layer_{i}")(x, positions, segment_ids)
    return RMSNorm(param_dtype=self.block.get("param_dtype", jnp.float32), name="final_norm")(x)


class _ScanAdapter(nn.Module):
  """Gives a block the (carry, xs) -> (carry, ys) signature nn.scan wants."""
  block_cls: Any
  block: dict

  @nn.compact
  def __call__(self, x, positions, segment_ids):
    return self.block_cls(**self.block, name="block")(x, positions, segment_ids), None
