"""Basic layers with logical axis names on every parameter: norms, embeddings, MLPs, RoPE.

Logical names (mapped to mesh axes by ``config.sharding_rules``): ``embed`` (model width),
``mlp`` (hidden width of feed-forward layers), ``vocab``, ``heads``, ``kv_heads``,
``head_dim``, ``norm``, and ``batch`` / ``length`` for activations.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
default_init = nn.initializers.normal(stddev=0.02)


def param_with_axes(module: nn.Module, name: str, init, shape, axes, dtype) -> jax.Array:
  """A parameter annotated with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm (Zhang & Sennrich 2019); statistics in float32."""
  epsilon: float = 1e-6
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",),
                            self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


class Embed(nn.Module):
  """Token embedding (vocab, embed); `attend` gives tied output logits."""
  vocab_size: int
  features: int
  param_dtype: Dtype = jnp.float32
  embedding_init: Any = default_init

  def setup(self):
    self.embedding = param_with_axes(self, "embedding", self.embedding_init,
                                     (self.vocab_size, self.features), ("vocab", "embed"),
                                     self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids (..., L) int -> (..., L, features)."""
    # Gather from a table replicated along `embed` (FSDP all-gathers it, as for any weight):
    # a gather from an embed-sharded table into batch-sharded rows makes XLA replicate.
    table = nn.with_logical_constraint(self.embedding, ("vocab", None))
    return jnp.take(table, ids, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """x (..., features) -> logits (..., vocab)."""
    return jnp.einsum("...d,vd->...v", x, self.embedding.astype(x.dtype))


class DenseGeneral(nn.Module):
  """x (..., *in) -> (..., *features), contracting the last `in_dims` axes of x.

  `axes` names the kernel's logical axes: (*in_axes, *out_axes).
  """
  features: tuple[int, ...]
  axes: tuple[str, ...]
  in_dims: int = 1
  use_bias: bool = False
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[x.ndim - self.in_dims:]
    kernel = param_with_axes(self, "kernel", self.kernel_init, (*in_shape, *self.features),
                             self.axes, self.param_dtype).astype(x.dtype)
    contract = tuple(range(x.ndim - self.in_dims, x.ndim))
    y = jnp.tensordot(x, kernel, axes=(contract, tuple(range(self.in_dims))))
    if self.use_bias:
      bias = param_with_axes(self, "bias", nn.initializers.zeros, self.features,
                             self.axes[self.in_dims:], self.param_dtype)
      y = y + bias.astype(y.dtype)
    return y


class SwiGLU(nn.Module):
  """Gated feed-forward block (Shazeer 2020): W_out(silu(W_gate x) * W_up x)."""
  hidden: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    gate = DenseGeneral((self.hidden,), ("embed", "mlp"), param_dtype=self.param_dtype,
                        name="gate")(x)
    up = DenseGeneral((self.hidden,), ("embed", "mlp"), param_dtype=self.param_dtype,
                      name="up")(x)
    h = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    return DenseGeneral((d,), ("mlp", "embed"), param_dtype=self.param_dtype, name="down")(h)


def rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021), rotate-half form.

  x: (batch, length, heads, head_dim) with even head_dim; positions: (batch, length) int, or
  (batch, length, axes) for multi-axis RoPE (e.g. (row, col) on an image grid): head_dim is
  split into `axes` equal chunks and chunk a is rotated by positions[..., a] alone, so q.k
  depends only on the per-axis offsets. head_dim must then be divisible by 2 * axes.
  """
  if positions.ndim == x.ndim - 1:
    axes = positions.shape[-1]
    if x.shape[-1] % (2 * axes):
      raise ValueError(f"head_dim {x.shape[-1]} must be divisible by {2 * axes} for RoPE over "
                       f"{axes} position axes")
    chunks = jnp.split(x, axes, axis=-1)
    return jnp.concatenate([rope(c, positions[..., a], theta) for a, c in enumerate(chunks)],
                           axis=-1)
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs          # (B, L, half)
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
