"""3-D building blocks for video models, written once: tubelets, 3-D positions and a
factorised space-time transformer.

- `patchify_3d` / `unpatchify_3d`: (B, T, H, W, C) <-> (B, t*h*w, tubelet*p*p*C) with
  t = T / tubelet, h = H / p, w = W / p; exact inverses. Tokens in raster order over
  (latent frame, row, column); each token vector ordered (frame in tubelet, row in patch,
  column in patch, channel), the 2-D `patchify` order with the tubelet's frames in front.
- `sincos_3d(t, h, w, dim)`: fixed positions of a (t, h, w) token grid: the first channels
  embed the latent frame (`sincos_1d`), the rest the (row, col) (`sincos_2d`).
- `SpaceTimeBlock` / `SpaceTimeTransformer`: the factorised attention of ViViT's "factorised
  self-attention" and of causal video tokenizers (MAGVIT-v2, ECHOPulse's tokenizer): per
  block, spatial self-attention among the h*w tokens of each latent frame, then temporal
  self-attention across the t latent frames at each (row, col) (causal when `causal_time`:
  latent frame i sees frames <= i only), then the SwiGLU MLP; pre-norm residuals. Attention
  is the shared `MultiHeadAttention` (so `dot_product_attention` and its kernels), the norm
  and MLP the shared `RMSNorm` / `SwiGLU`: the block only reshapes between the two attentions.
  Cost per block: O(t (hw)^2 + hw t^2) attention scores instead of O((thw)^2).

With `causal_time=True` a stack of blocks is causal in latent frames: output frame i is a
function of input frames <= i (spatial attention never mixes frames), the property that lets
a causal video tokenizer encode the first frame alone and stream later ones.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.attention import MultiHeadAttention
from tokenlab.nn.layers import RMSNorm, SwiGLU
from tokenlab.nn.transformer import REMAT_POLICIES
from tokenlab.nn.vision import sincos_1d, sincos_2d

Grid = tuple[int, int, int]


# ------------------------------------------------------------------------------ tubelets


def _check_divisible(frames: int, height: int, width: int, tubelet: int,
                     patch_size: int) -> None:
  if tubelet < 1 or patch_size < 1 or frames % tubelet or height % patch_size \
      or width % patch_size:
    raise ValueError(f"video of {frames} frames of {height}x{width} does not split into "
                     f"tubelets of {tubelet} frames x {patch_size}x{patch_size} pixels; pick a "
                     f"tubelet dividing the frames and a patch_size dividing height and width")


def video_grid(video_shape: tuple[int, ...], tubelet: int, patch_size: int) -> Grid:
  """(B, T, H, W, C) -> the token grid (t, h, w) = (T / tubelet, H / p, W / p)."""
  _, frames, height, width, _ = video_shape
  _check_divisible(frames, height, width, tubelet, patch_size)
  return frames // tubelet, height // patch_size, width // patch_size


def patchify_3d(video: jax.Array, tubelet: int, patch_size: int) -> jax.Array:
  """(B, T, H, W, C) -> (B, t*h*w, tubelet*p*p*C): non-overlapping tubelets in raster order
  (latent frame, row, column)."""
  b, frames, height, width, c = video.shape
  t, h, w = video_grid(video.shape, tubelet, patch_size)
  p = patch_size
  x = video.reshape(b, t, tubelet, h, p, w, p, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)             # (B, t, h, w, tubelet, p, p, C)
  return x.reshape(b, t * h * w, tubelet * p * p * c)


def unpatchify_3d(tokens: jax.Array, tubelet: int, patch_size: int, frames: int, height: int,
                  width: int) -> jax.Array:
  """(B, t*h*w, tubelet*p*p*C) -> (B, T, H, W, C); the exact inverse of `patchify_3d`.

  frames, height, width: the video size they were cut from.
  """
  b, n, d = tokens.shape
  p = patch_size
  _check_divisible(frames, height, width, tubelet, p)
  t, h, w = frames // tubelet, height // p, width // p
  if n != t * h * w or d % (tubelet * p * p):
    raise ValueError(f"tokens of shape {tokens.shape} are not {t}x{h}x{w} tubelets of "
                     f"{tubelet}x{p}x{p} pixels; pass the frames, height and width they were "
                     f"cut from")
  c = d // (tubelet * p * p)
  x = tokens.reshape(b, t, h, w, tubelet, p, p, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, frames, height, width, c)


# ----------------------------------------------------------------------------- positions


def sincos_3d(frames: int, height: int, width: int, dim: int,
              temperature: float = 10000.0) -> jax.Array:
  """(frames*height*width, dim) float32 fixed embedding of a (t, h, w) grid in raster order.

  The last `ds` channels are `sincos_2d(height, width, ds)` of the (row, col), ds the largest
  multiple of 4 <= 2 dim / 3; the first dim - ds channels `sincos_1d` of the latent frame.
  dim must be even and >= 6 (each part non-empty).
  """
  if dim % 2 or dim < 6:
    raise ValueError(f"3-D sin-cos embedding needs an even dim >= 6, got {dim}")
  ds = 4 * ((2 * dim // 3) // 4)
  time = sincos_1d(jnp.arange(frames), dim - ds, temperature)             # (t, dim - ds)
  space = sincos_2d(height, width, ds, temperature)                       # (h*w, ds)
  return jnp.concatenate([
      jnp.broadcast_to(time[:, None, :], (frames, height * width, dim - ds)),
      jnp.broadcast_to(space[None], (frames, height * width, ds))], axis=-1).reshape(
          frames * height * width, dim)


# ------------------------------------------------------------------ space-time transformer


class SpaceTimeBlock(nn.Module):
  """Factorised space-time block: (B, t*h*w, D) tokens of a (t, h, w) grid -> same shape.

  x + SpatialAttn(RMSNorm(x)) within each latent frame; x + TemporalAttn(RMSNorm(x)) across
  latent frames at each (row, col), causal when `causal_time`; x + SwiGLU(RMSNorm(x)).
  No RoPE: positions come from `sincos_3d` added to the input (`SpaceTimeTransformer`).
  """
  grid: Grid
  num_heads: int
  head_dim: int
  mlp_dim: int
  causal_time: bool = False
  attention_impl: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    t, h, w = self.grid
    if n != t * h * w:
      raise ValueError(f"{n} tokens are not the {t}x{h}x{w} grid the block was built for")
    attention = lambda causal, name: MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, causal=causal, use_rope=False,
        implementation=self.attention_impl, param_dtype=self.param_dtype, name=name)
    # Spatial: each latent frame is one attention row of h*w tokens, so frames never mix.
    hs = RMSNorm(param_dtype=self.param_dtype, name="space_norm")(x)
    hs = attention(False, "space_attn")(hs.reshape(b * t, h * w, d))
    x = x + hs.reshape(b, n, d)
    # Temporal: each (row, col) is one attention row of t tokens.
    ht = RMSNorm(param_dtype=self.param_dtype, name="time_norm")(x)
    ht = ht.reshape(b, t, h * w, d).transpose(0, 2, 1, 3).reshape(b * h * w, t, d)
    ht = attention(self.causal_time, "time_attn")(ht)
    x = x + ht.reshape(b, h * w, t, d).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    hm = RMSNorm(param_dtype=self.param_dtype, name="mlp_norm")(x)
    return x + SwiGLU(self.mlp_dim, param_dtype=self.param_dtype, name="mlp")(hm)


class SpaceTimeTransformer(nn.Module):
  """(B, t*h*w, D) -> (B, t*h*w, D): optional `sincos_3d` positions added, `num_layers`
  `SpaceTimeBlock`s, a final RMSNorm. `remat` as in TransformerStack (none | full | dots)."""
  grid: Grid
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  causal_time: bool = False
  add_positions: bool = True
  remat: str = "none"
  attention_impl: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat='{self.remat}' unknown; use one of {sorted(REMAT_POLICIES)}")
    if self.add_positions:
      x = x + sincos_3d(*self.grid, x.shape[-1]).astype(x.dtype)
    block_cls = SpaceTimeBlock
    if self.remat != "none":
      block_cls = nn.remat(SpaceTimeBlock, policy=REMAT_POLICIES[self.remat])
    for i in range(self.num_layers):
      x = block_cls(tuple(self.grid), self.num_heads, self.head_dim, self.mlp_dim,
                    self.causal_time, self.attention_impl, self.param_dtype,
                    name=f"block_{i}")(x)
    return RMSNorm(param_dtype=self.param_dtype, name="final_norm")(x)
