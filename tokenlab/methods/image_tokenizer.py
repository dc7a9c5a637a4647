"""Image tokenizer: a vector-quantized autoencoder (VQ-VAE, van den Oord et al. 2017) whose
integer codes are the image tokens other methods model.

images (B, H, W, C) in [0, 1] -> encoder -> latents z (B, h, w, D) on a grid downsampled
2^len(channel_mult) times (conv) or by patch_size (ViT) -> quantizer -> codes (B, h, w) (or
(B, h, w, G) for G code streams: RVQ levels) -> decoder -> reconstruction (B, H, W, C).

- Encoder/decoder: `arch="conv"` (default; a small VQGAN-style stack: 3x3 convs, residual
  blocks with GroupNorm and SiLU, stride-2 convs down, nearest-neighbour upsampling + conv up)
  or `arch="vit"` (the ViT of tokenlab/nn/vision.py over patches as the encoder, a
  non-causal transformer over the latent grid with 2-D sin-cos positions and a linear
  un-patchify head as the decoder, as ViT-VQGAN).
- Quantizer (`quantizer`), all from tokenlab/nn/quantizers.py: `vq_ema` (EMA codebook and
  dead-code restart, the codebook in the `vq_stats` collection: this method is then stateful,
  see tokenlab/method.py), `vq` (codebook learned by the codebook loss), `rvq` (residual VQ
  with EMA levels, stateful), `fsq`, `lfq`, `binary` (Bernoulli bits in training, the decoder
  sees them as +-1), or `kl`: no quantizer, a continuous latent with a diagonal Gaussian
  posterior (the KL-regularised autoencoder of latent diffusion / MAR; a sample in training,
  the mean at eval; `quantizer_weight` x the KL per latent element is its loss). `encode`
  then returns the posterior mean (B, h, w, latent_dim) float32, and `decode` takes such
  latents: the continuous tokenizer that TokenBridge quantizes after training.
- Loss: MSE (+ `l1_weight` x L1) of the reconstruction + `quantizer_weight` x the quantizer's
  own loss (commitment / codebook / entropy). Simplified against VQGAN: no perceptual or
  adversarial loss (toy scale, no pretrained network may be downloaded), so reconstructions
  are blurrier than a VQGAN's at the same bits.
- Metrics: loss, mse, psnr (mean over images of the clipped reconstruction's PSNR),
  bits_per_image (grid positions x bits per position), usage and perplexity of the codes.

API for other methods and tools (no trainer involved): `encode(variables, images) -> codes`,
`decode(variables, codes) -> images` (clipped to [0, 1]), `reconstruct(variables, images)`,
where `variables` is the flax variables dict `{'params': ..., **state}`
(`tokenlab.method.as_variables`); `tokenlab.train.inference.load_frozen_tokenizer(workdir)`
binds them to a trained run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.evals.image import reconstruction_metrics
from tokenlab.method import Average, Batch, Method, PyTree, as_variables
from tokenlab.nn.layers import DenseGeneral
# The quantizer wiring (and the KL bottleneck) live in nn/quantizers.py, shared with the video
# tokenizer; the names stay importable from here.
from tokenlab.nn.quantizers import GaussianPosterior  # noqa: F401  (re-exported)
from tokenlab.nn.quantizers import STATS, Quantized, make_quantizer
from tokenlab.nn.quantizers import quantizer_latent_size as latent_size
from tokenlab.nn.transformer import TransformerStack
from tokenlab.nn.vision import ViT, default_mlp_dim, sincos_2d, unpatchify
from tokenlab.registry import register_method

QUANTIZERS = ("vq_ema", "vq", "rvq", "fsq", "lfq", "binary", "kl")
ARCHS = ("conv", "vit")


@dataclasses.dataclass(frozen=True)
class ImageTokenizerConfig:
  channels: int = 3               # image channels (1 for mnist/digits, 3 for shapes/photos)
  arch: str = "conv"              # conv | vit
  quantizer: str = "vq_ema"       # vq_ema | vq | rvq | fsq | lfq | binary | kl (continuous)
  # conv
  width: int = 32                 # channels of the first stage
  channel_mult: tuple = (1, 2)    # one stride-2 stage per entry: grid = image / 2^len
  num_res_blocks: int = 1
  # vit
  patch_size: int = 4
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  # quantizer
  latent_dim: int = 16            # vq / vq_ema / rvq vector size; kl latent channels
  codebook_size: int = 256        # vq / vq_ema / rvq entries per codebook
  rvq_levels: int = 2
  fsq_levels: tuple = (8, 5, 5, 5)
  num_bits: int = 10              # lfq / binary bits per position
  commitment_cost: float = 0.25
  ema_decay: float = 0.99
  dead_after: int = 0             # restart a VQ code unused this many updates (0 = never)
  lfq_entropy_weight: float = 0.1
  # loss
  l1_weight: float = 0.0
  quantizer_weight: float = 1.0


def _conv_init(axes: tuple):
  # LeCun normal, untruncated: the truncated normal's inverse erf costs compile time.
  return nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, "fan_in", "normal"), axes)


class _Conv(nn.Module):
  """nn.Conv with a logically named kernel: (kh, kw, in, out); out channels on `embed`
  (FSDP shards them), the image-side in/out channels unsharded (3 does not split)."""
  features: int
  kernel: int = 3
  stride: int = 1
  out_axis: str | None = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                   padding="SAME", kernel_init=_conv_init((None, None, None, self.out_axis)),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                          (self.out_axis,)))(x)


def _norm(x: jax.Array) -> jax.Array:
  groups = math.gcd(8, x.shape[-1])
  return nn.GroupNorm(num_groups=groups,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ("embed",)))(x)


class _ResBlock(nn.Module):
  """x + conv(silu(norm(conv(silu(norm(x)))))), a 1x1 projection when channels change."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _Conv(self.features)(nn.silu(_norm(x)))
    h = _Conv(self.features)(nn.silu(_norm(h)))
    if x.shape[-1] != self.features:
      x = _Conv(self.features, kernel=1)(x)
    return x + h


class _ConvEncoder(nn.Module):
  """(B, H, W, C) -> (B, H / 2^S, W / 2^S, out_dim), S = len(channel_mult)."""
  width: int
  channel_mult: tuple
  num_res_blocks: int
  out_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _Conv(self.width)(x)
    for mult in self.channel_mult:
      for _ in range(self.num_res_blocks):
        x = _ResBlock(self.width * mult)(x)
      x = _Conv(self.width * mult, kernel=4, stride=2)(x)
    x = _ResBlock(self.width * self.channel_mult[-1])(x)
    return _Conv(self.out_dim, kernel=1, out_axis=None)(nn.silu(_norm(x)))


class _ConvDecoder(nn.Module):
  """(B, h, w, D) -> (B, h 2^S, w 2^S, channels): the encoder mirrored."""
  width: int
  channel_mult: tuple
  num_res_blocks: int
  channels: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = _Conv(self.width * self.channel_mult[-1])(z)
    x = _ResBlock(self.width * self.channel_mult[-1])(x)
    for mult in reversed(self.channel_mult):
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
      x = _Conv(self.width * mult)(x)
      for _ in range(self.num_res_blocks):
        x = _ResBlock(self.width * mult)(x)
    return _Conv(self.channels, out_axis=None)(nn.silu(_norm(x)))


class _ViTDecoder(nn.Module):
  """(B, h, w, D) -> (B, h p, w p, channels): embed, 2-D sin-cos positions, a non-causal
  transformer, a linear head to p x p x channels pixels per token, un-patchify."""
  patch_size: int
  d_model: int
  num_layers: int
  num_heads: int
  channels: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    b, h, w, d = z.shape
    x = DenseGeneral((self.d_model,), (None, "embed"), use_bias=True, name="embed")(
        z.reshape(b, h * w, d))
    x = x + sincos_2d(h, w, self.d_model).astype(x.dtype)
    block = dict(num_heads=self.num_heads, head_dim=self.d_model // self.num_heads,
                 mlp_dim=default_mlp_dim(self.d_model), causal=False, use_rope=False)
    x = TransformerStack(self.num_layers, block, name="decoder")(x)
    p = self.patch_size
    x = DenseGeneral((p * p * self.channels,), ("embed", None), use_bias=True, name="head")(x)
    return unpatchify(x, p, h * p, w * p)


class ImageTokenizerModule(nn.Module):
  """Encoder, quantizer and decoder; the methods below are the entry points for `apply`."""
  cfg: ImageTokenizerConfig

  def setup(self):
    cfg = self.cfg
    if cfg.arch == "conv":
      self.encoder = _ConvEncoder(cfg.width, tuple(cfg.channel_mult), cfg.num_res_blocks,
                                  self.latent_size)
      self.decoder = _ConvDecoder(cfg.width, tuple(cfg.channel_mult), cfg.num_res_blocks,
                                  cfg.channels)
    else:
      self.encoder = ViT(patch_size=cfg.patch_size, d_model=cfg.d_model,
                         num_layers=cfg.num_layers, num_heads=cfg.num_heads, pool="mean",
                         position="sincos")
      self.to_latent = DenseGeneral((self.latent_size,), ("embed", None), use_bias=True)
      self.decoder = _ViTDecoder(cfg.patch_size, cfg.d_model, cfg.num_layers, cfg.num_heads,
                                 cfg.channels)
    self.quantizer = make_quantizer(cfg)

  @property
  def latent_size(self) -> int:
    return latent_size(self.cfg)

  def encode_latents(self, images: jax.Array) -> jax.Array:
    """(B, H, W, C) -> z (B, h, w, latent_size), before quantization."""
    x = images * 2.0 - 1.0                 # centred inputs
    if self.cfg.arch == "conv":
      return self.encoder(x)
    _, features = self.encoder(x)
    p = self.cfg.patch_size
    b, height, width = images.shape[:3]
    return self.to_latent(features).reshape(b, height // p, width // p, -1)

  def decode_values(self, values: jax.Array) -> jax.Array:
    """Quantized values (B, h, w, latent_size) -> unclipped images (B, H, W, channels)."""
    if self.cfg.quantizer == "binary":
      values = 2.0 * values - 1.0          # bits {0, 1} -> {-1, +1}
    return (self.decoder(values) + 1.0) / 2.0

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """codes (B, h, w[, G]) -> unclipped images."""
    return self.decode_values(self.quantizer.decode(codes))

  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, Quantized]:
    """-> (unclipped reconstruction (B, H, W, C), the quantizer's Quantized)."""
    q = self.quantizer(self.encode_latents(images), train=train)
    return self.decode_values(q.values), q


@register_method("image_tokenizer")
class ImageTokenizer(Method):
  """A VQ autoencoder trained on reconstruction; see the module docstring."""
  Config = ImageTokenizerConfig

  def __init__(self, config: ImageTokenizerConfig):
    if config.quantizer not in QUANTIZERS:
      raise ConfigError(f"config.model.quantizer='{config.quantizer}'; use one of {QUANTIZERS}")
    if config.arch not in ARCHS:
      raise ConfigError(f"config.model.arch='{config.arch}'; use one of {ARCHS}")
    super().__init__(config)
    self.module = ImageTokenizerModule(config)
    # EMA codebooks are state, not parameters: the trainer carries them (method.py).
    self.state_collections = (STATS,) if config.quantizer in ("vq_ema", "rvq") else ()
    q = make_quantizer(config)
    self.bits_per_token = float(q.bits_per_token)
    self.codebook_size = int(q.codebook_size)

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    images = batch["image"]
    if images.shape[-1] != self.config.channels:
      raise ConfigError(f"config.model.channels={self.config.channels} but the data's images "
                        f"have {images.shape[-1]} channels; set --config.model.channels="
                        f"{images.shape[-1]}")
    factor = self.downsampling
    if images.shape[1] % factor or images.shape[2] % factor:
      raise ConfigError(f"images of {images.shape[1]}x{images.shape[2]} pixels do not divide "
                        f"into the tokenizer's {factor}x{factor} cells; change "
                        f"config.model.channel_mult / patch_size or the data size")
    # Initialisation draws from an "unsafe_rbg" key seeded by `rng`: XLA:CPU compiles this
    # conv net's init in ~4 s with it and ~35 s with threefry (measured, BUILD_NOTES).
    seed = jax.random.randint(rng, (), 0, np.iinfo(np.int32).max)
    rng, q_rng = jax.random.split(jax.random.key(seed, impl="unsafe_rbg"))
    variables = self.module.init({"params": rng, "quantizer": q_rng}, images)
    if not self.state_collections:
      return variables["params"]
    return {"params": variables["params"], STATS: variables[STATS]}

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array, state: PyTree = None):
    """(loss, metrics) or, with an EMA codebook, (loss, metrics, new state)."""
    mutable = list(self.state_collections) or False
    out = self.module.apply(as_variables(params, state), batch["image"], train=True,
                            rngs={"quantizer": rng}, mutable=mutable)
    (recon, q), new_state = out if mutable else (out, None)
    loss, metrics = self._loss_and_metrics(batch, recon, q)
    return (loss, metrics) if new_state is None else (loss, metrics, dict(new_state))

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array,
                   state: PyTree = None) -> dict[str, Any]:
    recon, q = self.module.apply(as_variables(params, state), batch["image"], train=False)
    return self._loss_and_metrics(batch, recon, q)[1]

  def _loss_and_metrics(self, batch: Batch, recon: jax.Array, q: Quantized):
    images = batch["image"]
    mask = batch.get("mask", jnp.ones(images.shape[:1], jnp.float32)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    metrics = reconstruction_metrics(images, recon, mask,
                                     bits=self.bits_per_image(images.shape[1:3]))
    per_image = jnp.mean(jnp.square(recon - images), axis=(1, 2, 3))
    if self.config.l1_weight:
      per_image = per_image + self.config.l1_weight * jnp.mean(jnp.abs(recon - images),
                                                               axis=(1, 2, 3))
    loss = jnp.sum(per_image * mask) / count + self.config.quantizer_weight * q.loss
    metrics["loss"] = Average.of(loss * jnp.sum(mask), jnp.sum(mask))
    metrics["quantizer_loss"] = q.loss
    for key in ("usage", "perplexity", "restarted"):   # a continuous latent has no codes
      if key in q.metrics:
        metrics[key] = q.metrics[key]
    return loss, metrics

  # -------------------------------------------------------------- tokenizer interface

  @property
  def downsampling(self) -> int:
    """Pixels per code position along each side."""
    cfg = self.config
    return cfg.patch_size if cfg.arch == "vit" else 2 ** len(cfg.channel_mult)

  def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The code grid (h, w) of an image of (H, W) pixels."""
    return image_hw[0] // self.downsampling, image_hw[1] // self.downsampling

  def bits_per_image(self, image_hw: tuple[int, int]) -> float:
    """Code positions x bits per position (all code streams)."""
    h, w = self.grid(image_hw)
    return float(h * w * self.bits_per_token)

  def encode(self, variables: PyTree, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) in [0, 1] -> codes (B, h, w) int32 ((B, h, w, L) for rvq)."""
    return self.module.apply(variables, images, method=_encode_codes)

  def decode(self, variables: PyTree, codes: jax.Array) -> jax.Array:
    """codes from `encode` -> images (B, H, W, C) clipped to [0, 1]."""
    out = self.module.apply(variables, codes, method=ImageTokenizerModule.decode_codes)
    return jnp.clip(out, 0.0, 1.0)

  def reconstruct(self, variables: PyTree, images: jax.Array) -> jax.Array:
    """The eval-mode forward pass: images -> reconstructions clipped to [0, 1] (equal to
    decode(encode(images)))."""
    recon, _ = self.module.apply(variables, images, train=False)
    return jnp.clip(recon, 0.0, 1.0)

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array, *,
             state: PyTree = None) -> jax.Array:
    """(2, B, H, W, C): the batch's images (row 0) above their reconstructions (row 1), the
    picture `tokenlab sample` writes for a tokenizer."""
    del rng
    recon = self.reconstruct(as_variables(params, state), batch["image"])
    return jnp.stack([batch["image"], recon])


def _encode_codes(module: ImageTokenizerModule, images: jax.Array) -> jax.Array:
  return module.quantizer(module.encode_latents(images), train=False).codes

