"""TEASER's multi-scale tokens on toy images (method `teaser`).

Paper: Liu et al., "TEASER: Token Enhanced Spatial Modeling for Expressions Reconstruction"
(ICLR 2025; arXiv 2502.10982); reference code Pixel-Talk/TEASER (`src/teaser_encoder.py`
TokenEncoder, `src/teaser_generator.py`, `src/teaser_trainer.py`, `configs/config_train.yaml`,
read in the julia-cherry/Teaser_official copy; not copied). TEASER
reconstructs a face through a 3-D face model and a neural renderer; its multi-scale tokens
carry the appearance the renderer's geometry lacks. Only the token part runs here, on
`shapes`: an image is encoded into a few tokens and decoded back from them alone.

The method, in the paper's order:

1. Multi-scale token encoder (TokenEncoder). A feature pyramid F_1 .. F_S of the image (finest
   first); the deepest map is average-pooled to 1x1, the next to 2x2, then 4x4, 8x8 (`scales`,
   coarse to fine), each pooled map is flattened and linearly projected to ONE token of
   `token_dim` numbers: S tokens (B, S, D), token s seeing the image at its own resolution
   (`tokens="multi"`).
   Peer at the same token count and width (`tokens="single"`): the S tokens come from ONE
   scale, the deepest map's cells (the usual grid of latents: its 2x2 cells for S = 4, each
   cell projected by one shared linear layer).
2. Token-conditioned generator. A token decoder maps the concatenated tokens to a spatial
   grid of features (the paper's TokenDecoder: a linear layer to a grid, added to the
   generator's features); then one block per token, block s modulated by token s with
   adaptive normalisation (the paper's ADAIN: parameter-free norm, scale and shift from the
   token; here the adaLN of the shared DiT block, coarse token first as the paper's coarsest
   generator level takes the 1x1 token), and a final adaLN layer conditioned on all tokens
   to pixels of p x p patches.
3. Loss (teaser_trainer.py): reconstruction loss + `cycle_weight` x the token-cycle loss:
   the reconstruction is encoded again by the same encoder and its tokens are matched to the
   original tokens by MSE, summed over scales. Gradients flow into both sides (the reference
   detaches neither); `cycle_weight` = 0.5 is the reference's weight ratio (token cycle 5 :
   L1 10). The paper applies it while fine-tuning a pre-trained encoder and generator (its
   train config loads both); the reproduction does the same (pre-train with cycle_weight 0,
   then `init_from`).

Follows the paper exactly: one token per scale from features pooled at 1x1, 2x2, 4x4, 8x8
(deepest features at the coarsest scale), flattened and linearly projected; per-scale
token-conditioned adaptive normalisation with the coarsest token at the coarsest stage; the
token decoder from all tokens to a spatial grid; the token-cycle MSE per scale through the
same encoder, both sides with gradients, at the reference's relative weight, applied when
fine-tuning a pre-trained model.
Simplified, and why: no face model, renderer, landmarks or masked-image input (toy data
without faces; the generator sees the tokens only, so the tokens carry the whole image); a
pyramid of 2x2 patch-merging layers (patchify + linear + GELU, as the repo's sample
classifier; XLA:CPU convolution gradients are slow) instead of a pretrained MobileNetV3; the
generator is a small transformer over a grid of p x p-pixel cells (4x4 cells of 8x8 pixels
at size=small; the shared DiT block's adaLN in place of the U-Net's AdaIN convolutions:
the same conditioning idea, with the repo's blocks); no
perceptual, emotion or region losses (nothing pretrained may be downloaded); linear output
instead of a sigmoid (pixels of `shapes` are exactly 0 or 1; the sigmoid only slows a short
run); no augmentation. Three changes found in development probes (one seed each, before
any reproduction run): the reconstruction loss is MSE (`recon_loss="l1"`, the paper's, kept
as an option: on images ~90% black its minimiser at the start is the all-black image, and
every probe stayed there); the pyramid, token and token-decoder layers use LeCun-normal
initialisation (with the repo's normal(0.02) the activations shrank ~10x per pyramid level
and the tokens carried nothing); and each token is normalised to zero mean and unit RMS by
a parameter-free LayerNorm (`token_norm`; the reference leaves the scale free, so a cycle
loss with gradients on both sides can be met by shrinking every token).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.evals.image import reconstruction_metrics
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.layers import DenseGeneral
from tokenlab.nn.vision import (DiTBlock, DiTFinalLayer, default_mlp_dim, patchify, sincos_2d,
                                unpatchify)
from tokenlab.registry import register_method

TOKENS = ("multi", "single")
# LeCun normal (untruncated: the truncated normal's inverse erf costs compile time): the
# pyramid's layers keep unit-scale activations; the repo's default normal(0.02) shrank them
# ~10x per level, and the tokens carried nothing (a pilot stayed at the mean image).
_LECUN = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
RECON_LOSSES = ("mse", "l1")


@dataclasses.dataclass(frozen=True)
class TeaserConfig:
  channels: int = 3               # image channels
  tokens: str = "multi"           # multi (one token per scale) | single (cells of one scale)
  scales: tuple = (1, 2, 4, 8)    # pooled grid side of each token, coarse to fine
  width: int = 32                 # channels of the finest pyramid level (x2 per level)
  token_dim: int = 16             # numbers per token
  d_model: int = 64               # generator width
  num_heads: int = 4
  patch_size: int = 4             # generator's output patches
  cycle_weight: float = 0.5       # token-cycle loss weight (0 = off); reconstruction weight 1
  recon_loss: str = "mse"         # mse | l1 (the paper's; collapsed to black here, see above)
  token_norm: bool = True         # parameter-free LayerNorm on each token (scale fixed)


def pool(x: jax.Array, rows: int, cols: int | None = None) -> jax.Array:
  """Adaptive average pooling of (B, H, W, C) to (B, rows, cols, C) (cols = rows if not
  given); rows divides H and cols divides W."""
  b, h, w, c = x.shape
  cols = rows if cols is None else cols
  if h % rows or w % cols:
    raise ValueError(f"a {h}x{w} feature map does not pool evenly to {rows}x{cols}")
  return x.reshape(b, rows, h // rows, cols, w // cols, c).mean(axis=(2, 4))


def cell_grid(count: int) -> tuple[int, int]:
  """(rows, cols) of the single-scale token grid: rows * cols = count, as square as can be
  (4 -> 2x2, 2 -> 1x2)."""
  rows = max(r for r in range(1, math.isqrt(count) + 1) if count % r == 0)
  return rows, count // rows


def pyramid_sizes(image_hw: tuple[int, int], levels: int) -> list[tuple[int, int]]:
  """(H, W) of each pyramid level, finest first: every level halves the previous."""
  return [(image_hw[0] >> (i + 1), image_hw[1] >> (i + 1)) for i in range(levels)]


class TokenEncoder(nn.Module):
  """images (B, H, W, C) in [0, 1] -> tokens (B, S, token_dim), S = len(scales).

  Pyramid: level i (i = 0 finest) = GELU(Linear(patchify(level i-1, 2))), H / 2^(i+1) on a
  side, width * 2^i channels. tokens="multi": token s (s = 0 coarsest) pools level S-1-s to
  scales[s] x scales[s], flattens and projects; "single": the deepest level pooled to
  sqrt(S) x sqrt(S), each cell projected by one shared layer (raster order).
  """
  cfg: TeaserConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.cfg
    levels = len(cfg.scales)
    x = images * 2.0 - 1.0
    feats = []
    for i in range(levels):
      x = DenseGeneral((cfg.width * 2 ** i,), (None, "embed"), use_bias=True,
                       kernel_init=_LECUN, name=f"merge_{i}")(patchify(x, 2).reshape(
                           x.shape[0], x.shape[1] // 2, x.shape[2] // 2, -1))
      x = nn.gelu(x)
      feats.append(x)
    b = images.shape[0]
    if cfg.tokens == "multi":
      tokens = []
      for s, side in enumerate(cfg.scales):
        f = pool(feats[levels - 1 - s], side).reshape(b, -1)
        tokens.append(DenseGeneral((cfg.token_dim,), ("embed", None), use_bias=True,
                                   kernel_init=_LECUN, name=f"token_{s}")(f))
      tokens = jnp.stack(tokens, axis=1)
    else:
      cells = pool(feats[-1], *cell_grid(levels)).reshape(b, levels, -1)
      tokens = DenseGeneral((cfg.token_dim,), ("embed", None), use_bias=True,
                            kernel_init=_LECUN, name="token")(cells)
    if cfg.token_norm:
      # Every token at zero mean and unit RMS: the cycle loss cannot be met by shrinking
      # all tokens together (the generator would undo any scale).
      tokens = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False)(tokens)
    return tokens


class TokenGenerator(nn.Module):
  """tokens (B, S, token_dim) -> unclipped images (B, H, W, channels).

  Token decoder: Linear(concat tokens) -> (H/p x W/p grid, d_model) + 2-D sin-cos positions;
  block s: DiT block (adaLN) conditioned on token s; final adaLN layer conditioned on all
  tokens -> p x p x channels pixels per grid cell, un-patchified.
  """
  cfg: TeaserConfig
  image_hw: tuple[int, int]

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.cfg
    b, s, d = tokens.shape
    p = cfg.patch_size
    gh, gw = self.image_hw[0] // p, self.image_hw[1] // p
    flat = tokens.reshape(b, s * d)
    x = DenseGeneral((gh * gw, cfg.d_model), (None, None, "embed"), use_bias=True,
                     kernel_init=_LECUN, name="token_decoder")(flat)
    x = x + sincos_2d(gh, gw, cfg.d_model).astype(x.dtype)
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.d_model // cfg.num_heads,
                 mlp_dim=default_mlp_dim(cfg.d_model))
    for i in range(s):
      x = DiTBlock(**block, name=f"block_{i}")(x, tokens[:, i])
    x = DiTFinalLayer(p * p * cfg.channels, name="final")(x, flat)
    return (unpatchify(x, p, *self.image_hw) + 1.0) / 2.0


class TeaserModule(nn.Module):
  cfg: TeaserConfig
  image_hw: tuple[int, int]

  def setup(self):
    self.encoder = TokenEncoder(self.cfg)
    self.generator = TokenGenerator(self.cfg, self.image_hw)

  def encode(self, images: jax.Array) -> jax.Array:
    return self.encoder(images)

  def decode(self, tokens: jax.Array) -> jax.Array:
    return self.generator(tokens)

  def autoencode(self, images: jax.Array) -> jax.Array:
    """images -> unclipped reconstruction: every parameter, without the cycle's second
    encoder pass (what `init` traces: a smaller program to compile)."""
    return self.generator(self.encoder(images))

  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """-> (tokens (B, S, D), reconstruction (B, H, W, C) unclipped, tokens of the
    reconstruction (B, S, D): the same encoder applied again, for the token-cycle loss)."""
    tokens = self.encoder(images)
    recon = self.generator(tokens)
    return tokens, recon, self.encoder(recon)


def token_cycle_loss(tokens: jax.Array, cycled: jax.Array,
                     mask: jax.Array | None = None) -> jax.Array:
  """Sum over scales of the MSE between the reconstruction's tokens and the image's tokens.

  tokens, cycled (B, S, D); mask (B,) weighs images (padding rows 0). Per scale the mean over
  images and token numbers (the reference's F.mse_loss per scale), then summed over S.
  """
  b = tokens.shape[0]
  mask = jnp.ones((b,), jnp.float32) if mask is None else mask.astype(jnp.float32)
  per = jnp.mean(jnp.square((cycled - tokens).astype(jnp.float32)), axis=-1)   # (B, S)
  return jnp.sum(jnp.sum(per * mask[:, None], axis=0) / jnp.maximum(jnp.sum(mask), 1.0))


@register_method("teaser")
class Teaser(Method):
  """Multi-scale token autoencoder with the token-cycle loss; see the module docstring."""
  Config = TeaserConfig

  def __init__(self, config: TeaserConfig):
    if config.tokens not in TOKENS:
      raise ConfigError(f"config.model.tokens='{config.tokens}'; use one of {TOKENS}")
    if config.recon_loss not in RECON_LOSSES:
      raise ConfigError(f"config.model.recon_loss='{config.recon_loss}'; use one of "
                        f"{RECON_LOSSES}")
    scales = tuple(config.scales)
    if list(scales) != sorted(scales) or any(a * 2 != b for a, b in zip(scales, scales[1:])):
      raise ConfigError(f"config.model.scales={scales} must double from coarse to fine, e.g. "
                        "(1, 2, 4, 8)")
    super().__init__(config)

  def module(self, image_hw: tuple[int, int]) -> TeaserModule:
    return TeaserModule(self.config, tuple(int(v) for v in image_hw))

  def _check(self, images: jax.Array) -> None:
    cfg = self.config
    h, w, c = images.shape[1:]
    if c != cfg.channels:
      raise ConfigError(f"config.model.channels={cfg.channels} but the images have {c}; set "
                        f"--config.model.channels={c}")
    levels = len(cfg.scales)
    deepest = pyramid_sizes((h, w), levels)[-1]
    finest_token = cfg.scales[-1]
    if (h % 2 ** levels or w % 2 ** levels or h % cfg.patch_size or w % cfg.patch_size
        or (h >> 1) % finest_token):
      raise ConfigError(f"{h}x{w} images do not fit {levels} pyramid levels with tokens "
                        f"pooled at {tuple(cfg.scales)} and {cfg.patch_size}-pixel patches; "
                        "use 32x32 images with scales (1, 2, 4, 8)")
    rows, cols = cell_grid(levels)
    if cfg.tokens == "single" and (deepest[0] % rows or deepest[1] % cols):
      raise ConfigError(f"the deepest pyramid level is {deepest[0]}x{deepest[1]}: it does not "
                        f"split into the {rows}x{cols} single-scale token cells; use 32x32 "
                        "images with scales (1, 2, 4, 8)")

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    images = batch["image"]
    self._check(images)
    # An "unsafe_rbg" key: XLA:CPU compiles inits several times faster than with threefry.
    seed = jax.random.randint(rng, (), 0, np.iinfo(np.int32).max)
    key = jax.random.key(seed, impl="unsafe_rbg")
    return self.module(images.shape[1:3]).init(key, images,
                                               method=TeaserModule.autoencode)["params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    del rng
    images = batch["image"]
    mask = batch.get("mask", jnp.ones(images.shape[:1], jnp.float32)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    tokens, recon, cycled = self.module(images.shape[1:3]).apply({"params": params}, images)
    err = recon - images
    per_image = jnp.mean(jnp.abs(err) if self.config.recon_loss == "l1" else jnp.square(err),
                         axis=(1, 2, 3))
    recon_loss = jnp.sum(per_image * mask) / count
    cycle = token_cycle_loss(tokens, cycled, mask)
    loss = recon_loss + self.config.cycle_weight * cycle
    metrics = reconstruction_metrics(images, recon, mask)
    metrics.update(loss=Average.of(loss * count, count),
                   recon_loss=Average.of(recon_loss * count, count),
                   token_cycle=Average.of(cycle * count, count))
    return loss, metrics

  # -------------------------------------------------------------- tokenizer interface

  def encode(self, params: PyTree, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) in [0, 1] -> tokens (B, S, token_dim) float32."""
    return self.module(images.shape[1:3]).apply({"params": params}, images,
                                                method=TeaserModule.encode)

  def decode(self, params: PyTree, tokens: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
    """tokens (B, S, token_dim) -> images (B, H, W, C) clipped to [0, 1]."""
    out = self.module(image_hw).apply({"params": params}, tokens, method=TeaserModule.decode)
    return jnp.clip(out, 0.0, 1.0)

  def reconstruct(self, params: PyTree, images: jax.Array) -> jax.Array:
    """images -> decode(encode(images)) clipped to [0, 1]."""
    return self.decode(params, self.encode(params, images), images.shape[1:3])

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """(2, B, H, W, C): the images (row 0) above their reconstructions (row 1)."""
    del rng
    return jnp.stack([batch["image"], self.reconstruct(params, batch["image"])])


def token_count(config: TeaserConfig) -> int:
  """Tokens per image (both token kinds): one per scale."""
  return len(config.scales)


def numbers_per_image(config: TeaserConfig) -> int:
  """Floats the generator receives per image: tokens x token_dim (the bottleneck)."""
  return token_count(config) * config.token_dim
