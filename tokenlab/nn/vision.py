"""2-D building blocks for image models, written once: patches, 2-D positions, ViT, DiT.

- `patchify` / `unpatchify`: (B, H, W, C) <-> (B, H/p * W/p, p*p*C), exact inverses; patches
  in raster order, each patch vector ordered (row in patch, column in patch, channel).
- `grid_positions`, `sincos_2d`: (row, col) of each grid token and fixed 2-D sin-cos
  embeddings (first half of the channels encode the row, second half the column).
- 2-D RoPE: `tokenlab.nn.layers.rope` takes positions (B, L, 2), so `MultiHeadAttention` and
  the transformer blocks rotate q/k over (row, col) when given `grid_positions`; `rope_2d` is
  the same call for a grid.
- `PatchEmbed`: patchify + linear embedding + positions (sincos | learned | rope2d | none).
- `ViT`: `PatchEmbed`, a stack of the existing non-causal `TransformerBlock`s, class token or
  mean pooling, classifier head.
- DiT pieces (Peebles & Xie 2023): `timestep_embedding` + `TimestepEmbedder`, `ClassEmbedder`
  (with a null class for classifier-free guidance dropout), `DiTBlock` (adaLN-Zero),
  `DiTFinalLayer`, and a small `DiT` backbone assembling them.

Attention in ViT and DiT is `attention="dense"` (default) or `"neighborhood"`: image tokens
attend within `radius` of their (row, col) (`neighborhood_shape` "circle", CLEAR's
dy^2 + dx^2 < r^2, or "square") through `tokenlab.kernels.neighborhood_attention_2d`.
Every parameter carries logical axis names (see tokenlab/nn/layers.py).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.attention import MultiHeadAttention
from tokenlab.nn.layers import DenseGeneral, SwiGLU, default_init, param_with_axes, rope
from tokenlab.nn.transformer import TransformerStack

POSITIONS = ("sincos", "learned", "rope2d", "none")
ATTENTIONS = ("dense", "neighborhood")
POOLS = ("cls", "mean")


# ------------------------------------------------------------------------------ patches


def _check_divisible(height: int, width: int, patch_size: int) -> None:
  if patch_size < 1 or height % patch_size or width % patch_size:
    raise ValueError(f"image {height}x{width} does not split into {patch_size}x{patch_size} "
                     f"patches; pass a patch_size dividing both, or resize/crop the image")


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p * W/p, p*p*C): non-overlapping p x p patches in raster order."""
  b, h, w, c = images.shape
  p = patch_size
  _check_divisible(h, w, p)
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)                     # (B, h, w, p, p, C)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
  """(B, H/p * W/p, p*p*C) -> (B, H, W, C); the exact inverse of `patchify`.

  height, width: the image size in pixels.
  """
  b, n, d = tokens.shape
  p = patch_size
  _check_divisible(height, width, p)
  gh, gw = height // p, width // p
  if n != gh * gw or d % (p * p):
    raise ValueError(f"tokens of shape {tokens.shape} are not {gh}x{gw} patches of {p}x{p} "
                     f"pixels; pass the image height and width they were cut from")
  c = d // (p * p)
  x = tokens.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


# ----------------------------------------------------------------------------- positions


def grid_positions(height: int, width: int) -> jax.Array:
  """(height*width, 2) int32: (row, col) of each token of a grid in raster order."""
  rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(jnp.int32)


def sincos_1d(positions: jax.Array, dim: int, temperature: float = 10000.0) -> jax.Array:
  """(...,) positions -> (..., dim): [sin(pos * w_k), cos(pos * w_k)], w_k = T^(-k/(dim/2))."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
  half = dim // 2
  omega = temperature ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * omega
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> jax.Array:
  """(height*width, dim) float32 fixed 2-D embedding of a grid in raster order.

  Channels [0, dim/2) embed the row with `sincos_1d`, [dim/2, dim) the column, so the inner
  product of two embeddings depends only on their (row, col) offset. dim must divide by 4.
  """
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
  pos = grid_positions(height, width)
  return jnp.concatenate([sincos_1d(pos[:, 0], dim // 2, temperature),
                          sincos_1d(pos[:, 1], dim // 2, temperature)], axis=-1)


def rope_2d(x: jax.Array, height: int, width: int, theta: float = 10000.0) -> jax.Array:
  """2-D RoPE on q or k of a grid: (B, height*width, heads, head_dim) -> same shape.

  The first half of head_dim rotates with the row, the second with the column (head_dim
  divisible by 4), so q.k depends only on the (row, col) offset. The same as passing
  `grid_positions` as `positions` to MultiHeadAttention / TransformerBlock.
  """
  pos = jnp.broadcast_to(grid_positions(height, width), (x.shape[0], height * width, 2))
  return rope(x, pos, theta)


# --------------------------------------------------------- patch embedding, shared config


def neighborhood_spec(attention: str, grid: tuple[int, int], radius: float,
                      shape: str) -> tuple[int, int, float, str] | None:
  """The `neighborhood` argument of the attention layers for a config's `attention` field."""
  _check_choice("attention", attention, ATTENTIONS)
  if attention == "dense":
    return None
  return (grid[0], grid[1], float(radius), shape)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r}; use one of {choices}")


def default_mlp_dim(d_model: int) -> int:
  """4 * d_model scaled to SwiGLU's 2/3, rounded up to a multiple of 64 (as transformer_lm)."""
  return 64 * math.ceil(8 * d_model / 3 / 64)


class PatchEmbed(nn.Module):
  """images (B, H, W, C) -> (tokens (B, N, features), rope positions (B, N, 2) or None).

  Patches of patch_size x patch_size pixels, linearly embedded (a stride-p convolution), plus
  the position embedding: "sincos" (fixed `sincos_2d`) or "learned" are added to the tokens;
  "rope2d" returns the (row, col) grid positions for the attention layers; "none" neither.
  """
  patch_size: int
  features: int
  position: str = "sincos"
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    _check_choice("position", self.position, POSITIONS)
    b, h, w, _ = images.shape
    _check_divisible(h, w, self.patch_size)
    grid = (h // self.patch_size, w // self.patch_size)
    x = DenseGeneral((self.features,), (None, "embed"), use_bias=True,
                     param_dtype=self.param_dtype, name="proj")(
                         patchify(images, self.patch_size))
    if self.position == "sincos":
      x = x + sincos_2d(grid[0], grid[1], self.features).astype(x.dtype)
    elif self.position == "learned":
      x = x + param_with_axes(self, "pos_embedding", default_init,
                              (grid[0] * grid[1], self.features), (None, "embed"),
                              self.param_dtype).astype(x.dtype)
    if self.position != "rope2d":
      return x, None
    return x, jnp.broadcast_to(grid_positions(*grid), (b, grid[0] * grid[1], 2))


class _GridTransformer(nn.Module):
  """Fields and helpers shared by `ViT` and `DiT` (a transformer over a grid of patches)."""
  patch_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_classes: int = 0
  head_dim: int = 0             # 0 = d_model // num_heads
  mlp_dim: int = 0              # 0 = default_mlp_dim(d_model)
  position: str = "sincos"      # sincos | learned | rope2d | none
  attention: str = "dense"      # dense | neighborhood
  radius: float = 2.0           # neighborhood radius, in patches
  neighborhood_shape: str = "circle"  # circle (dy^2 + dx^2 < r^2) | square
  attention_impl: str | None = None
  rope_theta: float = 10000.0
  param_dtype: Any = jnp.float32

  def _embed(self, images: jax.Array):
    """-> (tokens (B, N, d_model), rope positions or None, neighborhood spec or None)."""
    x, positions = PatchEmbed(self.patch_size, self.d_model, self.position,
                              param_dtype=self.param_dtype, name="patch_embed")(images)
    grid = (images.shape[1] // self.patch_size, images.shape[2] // self.patch_size)
    return x, positions, neighborhood_spec(self.attention, grid, self.radius,
                                           self.neighborhood_shape)

  def _block_kwargs(self, neighborhood) -> dict:
    head_dim = self.head_dim or self.d_model // self.num_heads
    return dict(num_heads=self.num_heads, head_dim=head_dim,
                mlp_dim=self.mlp_dim or default_mlp_dim(self.d_model),
                neighborhood=neighborhood, attention_impl=self.attention_impl,
                use_rope=self.position == "rope2d", rope_theta=self.rope_theta,
                param_dtype=self.param_dtype)


# ---------------------------------------------------------------------------------- ViT


class ViT(_GridTransformer):
  """Vision transformer (Dosovitskiy et al. 2021) from the shared transformer blocks.

  images (B, H, W, C) -> (logits (B, num_classes) or None when num_classes = 0,
  features (B, N, d_model): the patch tokens after the final norm, N = H/p * W/p).

  Fields of `_GridTransformer` (position, attention, ...) plus pool: "cls" (a learned class
  token, prepended; under rope2d it sits at position (0, 0), i.e. unrotated) or "mean" (mean
  of the patch features); scan / remat as in TransformerStack. attention="neighborhood" needs
  pool="mean", since a class token is not on the grid.
  """
  pool: str = "cls"
  scan: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array | None, jax.Array]:
    _check_choice("pool", self.pool, POOLS)
    x, positions, neighborhood = self._embed(images)
    if neighborhood is not None and self.pool == "cls":
      raise ValueError("attention='neighborhood' needs pool='mean': a class token is not on "
                       "the image grid")
    b = x.shape[0]
    if self.pool == "cls":
      cls = param_with_axes(self, "cls_token", nn.initializers.zeros, (self.d_model,),
                            ("embed",), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.d_model)), x], 1)
      if positions is not None:
        positions = jnp.concatenate([jnp.zeros((b, 1, 2), positions.dtype), positions], 1)
    block = dict(self._block_kwargs(neighborhood), causal=False)
    x = TransformerStack(self.num_layers, block, scan=self.scan, remat=self.remat,
                         name="encoder")(x, positions)
    if self.pool == "cls":
      pooled, features = x[:, 0], x[:, 1:]
    else:
      pooled, features = x.mean(axis=1), x
    logits = None
    if self.num_classes:
      logits = DenseGeneral((self.num_classes,), ("embed", None), use_bias=True,
                            param_dtype=self.param_dtype, name="head")(pooled)
    return logits, features


# ------------------------------------------------------------------------------- DiT


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """(B,) float timesteps -> (B, dim) sinusoidal features [cos(t w_k), sin(t w_k)] (DiT)."""
  if dim % 2:
    raise ValueError(f"timestep embedding needs an even dim, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t.astype(jnp.float32)[:, None] * freqs
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbedder(nn.Module):
  """(B,) timesteps -> (B, features): sinusoidal features through Dense-SiLU-Dense."""
  features: int
  frequency_dim: int = 256
  max_period: float = 10000.0
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = timestep_embedding(t, self.frequency_dim, self.max_period)
    h = DenseGeneral((self.features,), (None, "mlp"), use_bias=True,
                     param_dtype=self.param_dtype, name="fc1")(h)
    return DenseGeneral((self.features,), ("mlp", "embed"), use_bias=True,
                        param_dtype=self.param_dtype, name="fc2")(jax.nn.silu(h))


class ClassEmbedder(nn.Module):
  """(B,) int labels -> (B, features), with a null class for classifier-free guidance.

  Row `num_classes` of the table is the null (unconditional) class. Labels equal to
  num_classes, rows where `drop` is True, and (with `train=True`) a random `dropout_prob`
  fraction of rows (rng stream "dropout") use it.
  """
  num_classes: int
  features: int
  dropout_prob: float = 0.1
  param_dtype: Any = jnp.float32

  @property
  def null_class(self) -> int:
    return self.num_classes

  @nn.compact
  def __call__(self, labels: jax.Array, *, train: bool = False,
               drop: jax.Array | None = None) -> jax.Array:
    if train and self.dropout_prob > 0:
      random_drop = jax.random.bernoulli(self.make_rng("dropout"), self.dropout_prob,
                                         labels.shape)
      drop = random_drop if drop is None else jnp.logical_or(drop, random_drop)
    if drop is not None:
      labels = jnp.where(drop, self.null_class, labels)
    # The table is small (classes + 1 rows): its class axis stays unsharded.
    table = param_with_axes(self, "embedding", default_init,
                            (self.num_classes + 1, self.features), (None, "embed"),
                            self.param_dtype)
    return jnp.take(table, labels, axis=0)


def _per_token(v: jax.Array) -> jax.Array:
  """A conditioning vector (B, D), shared by every token, -> (B, 1, D); per-token (B, L, D)
  vectors pass unchanged."""
  return v[:, None, :] if v.ndim == 2 else v


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x (B, L, D), shift/scale (B, D) or per token (B, L, D) -> x * (1 + scale) + shift."""
  return x * (1 + _per_token(scale)) + _per_token(shift)


class AdaLNModulation(nn.Module):
  """c (B, Dc) -> (B, num, features), or per token c (B, L, Dc) -> (B, L, num, features):
  SiLU then a zero-initialised projection (adaLN-Zero), so every shift, scale and gate is 0
  at init."""
  num: int
  features: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, c: jax.Array) -> jax.Array:
    return DenseGeneral((self.num, self.features), (None, None, "embed"), use_bias=True,
                        kernel_init=nn.initializers.zeros, param_dtype=self.param_dtype,
                        name="proj")(jax.nn.silu(c))


def _layer_norm(x: jax.Array) -> jax.Array:
  # No learned scale or bias: adaLN supplies them from the conditioning.
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False)(x)


class DiTBlock(nn.Module):
  """adaLN-Zero transformer block (DiT): (B, L, D) tokens and (B, Dc) conditioning -> (B, L, D).

  x + gate_a * Attn(modulate(LN(x), shift_a, scale_a)), then the same with the SwiGLU MLP;
  the six vectors come from `AdaLNModulation(c)`, zero at init, so the block is the identity
  at init. Attention is non-causal over the shared MultiHeadAttention; `neighborhood`
  selects 2-D local attention; with `use_rope`, pass (B, L, 2) grid positions for 2-D RoPE.
  c may also be per token, (B, L, Dc) (xAR: each entity has its own noise level), and `bias`
  an additive attention bias broadcastable to (B, heads, L, L) (e.g. -inf outside a
  block-causal mask).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: int | None = None
  neighborhood: tuple[int, int, float, str] | None = None
  attention_impl: str | None = None
  use_rope: bool = False
  rope_theta: float = 10000.0
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array,
               positions: jax.Array | None = None,
               bias: jax.Array | None = None) -> jax.Array:
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    mod = AdaLNModulation(6, x.shape[-1], param_dtype=self.param_dtype, name="adaln")(c)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod[..., i, :] for i in range(6))
    h = modulate(_layer_norm(x), shift_a, scale_a)
    h = MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
        causal=False, neighborhood=self.neighborhood, implementation=self.attention_impl,
        use_rope=self.use_rope, rope_theta=self.rope_theta, param_dtype=self.param_dtype,
        name="attn")(h, positions=positions, bias=bias)
    x = x + _per_token(gate_a) * h
    h = modulate(_layer_norm(x), shift_m, scale_m)
    h = SwiGLU(self.mlp_dim, param_dtype=self.param_dtype, name="mlp")(h)
    return x + _per_token(gate_m) * h


class DiTFinalLayer(nn.Module):
  """(B, L, D), c (B, Dc) or per token (B, L, Dc) -> (B, L, out_dim): modulate(LN(x)) by c,
  then a zero-initialised projection (DiT), so a DiT predicts zeros at init."""
  out_dim: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    mod = AdaLNModulation(2, x.shape[-1], param_dtype=self.param_dtype, name="adaln")(c)
    h = modulate(_layer_norm(x), mod[..., 0, :], mod[..., 1, :])
    return DenseGeneral((self.out_dim,), ("embed", None), use_bias=True,
                        kernel_init=nn.initializers.zeros, param_dtype=self.param_dtype,
                        name="proj")(h)


class DiT(_GridTransformer):
  """Class-conditional diffusion / flow transformer (Peebles & Xie 2023) on image patches.

  (images (B, H, W, C), t (B,) float, labels (B,) int) -> (B, H, W, out_channels or C).
  c = TimestepEmbedder(t) + ClassEmbedder(labels) conditions every `DiTBlock` and the
  `DiTFinalLayer`. `train=True` drops labels to the null class with `class_dropout`
  (rng "dropout"); `drop_labels` (B,) bool forces it (the unconditional half of classifier-free
  guidance). num_classes = 0 leaves only the null class (unconditional). Other fields as in
  `_GridTransformer` (position, attention, radius, ...).
  """
  out_channels: int = 0          # 0 = the input's channels
  class_dropout: float = 0.1

  @nn.compact
  def __call__(self, images: jax.Array, t: jax.Array, labels: jax.Array, *,
               train: bool = False, drop_labels: jax.Array | None = None) -> jax.Array:
    x, positions, neighborhood = self._embed(images)
    c = TimestepEmbedder(self.d_model, param_dtype=self.param_dtype, name="t_embed")(t)
    c = c + ClassEmbedder(self.num_classes, self.d_model, self.class_dropout,
                          param_dtype=self.param_dtype, name="y_embed")(
                              labels, train=train, drop=drop_labels)
    for i in range(self.num_layers):
      x = DiTBlock(**self._block_kwargs(neighborhood), name=f"block_{i}")(x, c, positions)
    _, h, w, ch = images.shape
    p = self.patch_size
    x = DiTFinalLayer(p * p * (self.out_channels or ch), param_dtype=self.param_dtype,
                      name="final")(x, c)
    return unpatchify(x, p, h, w)
