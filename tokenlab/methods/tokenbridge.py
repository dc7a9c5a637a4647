"""TokenBridge: discrete tokens from a continuous tokenizer by post-training, per-dimension
quantization, modelled with a small channel-wise autoregressive head.

Wang, Y., Lin, Z., Teng, Y., Zhu, Y., Ren, S., Feng, J., Liu, X. "Bridging Continuous and
Discrete Tokens for Autoregressive Visual Generation", arXiv 2503.16430 (2025); reference code
YuqingWang1029/TokenBridge (models/tokenbridge.py).

The method, in the paper's order:

1. A continuous tokenizer. A KL-regularised autoencoder (`experiments/tokenbridge.py`
   stage=tokenizer, the image_tokenizer method with `quantizer="kl"`) maps an image to a grid
   of N = h x w latent vectors of C channels; it is trained once, for reconstruction only.
2. Post-training quantization, per dimension. Each channel c is standardised with statistics
   of the training latents, x_c = (z_c - mean_c) / std_c, and quantized on its own into B bins
   with edges at the standard-normal quantiles Phi^-1(i / B) and, as value of a bin, the mean
   of a standard normal truncated to it (`tokenlab.nn.quantizers.GaussianQuantile`). A
   position becomes C indices in [0, B): a token from a space of B^C values that never had to
   be learned as a codebook, and the decoder of step 1 reads the dequantized latent.
3. Autoregressive generation over positions. A causal transformer reads the class and the
   tokens of the positions before i and outputs a condition h_i (the embedding of a previous
   position's token is the sum of one embedding per (channel, bin)).
4. The dimension-wise head. A small causal transformer over the channels of position i
   predicts p(x_{i,c} | h_i, x_{i,<c}) with a B-way softmax: its input sequence is
   [h_i, e(x_{i,0}), ..., e(x_{i,C-2})], so output c sees the condition and the channels
   before c only. Loss: cross-entropy of every (position, channel) index. Sampling draws the
   positions in raster order and, within one, the channels in order; the dequantized latent
   goes through the frozen decoder.

Comparison heads on the same backbone (config `head`), for the paper's two comparisons:
`flow` models the continuous standardised latent of each position with a flow-matching MLP
head (`tokenlab.nn.flow_matching.FlowHead`, Euler sampling: the MAR-style continuous arm),
and `softmax` predicts one code per position of a VQ tokenizer (`latent=vq`) with a single
softmax over its codebook.

Follows the paper: post-training per-dimension quantization with Gaussian-quantile edges and
truncated-normal-mean centres; a causal spatial transformer plus a causal transformer over
channels with cross-entropy; raster order.
Simplified, and why:
- Toy scale: B = 16 bins and C = 3 channels on a 7 x 7 grid of 28 x 28 MNIST (the paper: B =
  64, C = 16, 16 x 16 grids of ImageNet 256 px), so a token holds 12 bits and the VQ
  comparison needs 4,096 codes, not 2^96.
- Channels are predicted in their natural order; the paper also orders channels by frequency
  importance (a spectral ordering of the latent) and reports a small gain from it.
- No classifier-free guidance and temperature 1 in every arm (the paper tunes both per
  model): one fixed sampling setting keeps the three arms comparable without a search.
- Standardisation statistics come from the frozen tokenizer's latents on (up to
  `stats_images`) training images, computed when the method is built; the paper quantizes
  the VAE's scaled latent over a fixed range instead.
- Sampling recomputes the whole prefix at every position (no key/value cache), in every arm,
  so sampling times compare the heads, not the caching.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.flow_matching import FlowHead, euler_sample, flow_matching_loss
from tokenlab.nn.generate import sample_logits
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.quantizers import GaussianQuantile
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

HEADS = ("channel_ar", "flow", "softmax")


@dataclasses.dataclass(frozen=True)
class TokenBridgeConfig:
  tokenizer_workdir: str = ""   # a trained experiments/tokenbridge.py:stage=tokenizer run
  head: str = "channel_ar"      # channel_ar (TokenBridge) | flow | softmax (VQ codes)
  num_classes: int = 10
  bins: int = 16                # B, per channel (channel_ar)
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  head_layers: int = 1          # the channel head's causal transformer
  flow_width: int = 128
  flow_depth: int = 2
  flow_steps: int = 25          # Euler steps per position at sampling
  temperature: float = 1.0      # discrete heads' sampling temperature
  stats_images: int = 1000      # training images for the per-channel mean and std


def _block(d_model: int, num_heads: int) -> dict:
  return dict(num_heads=num_heads, head_dim=d_model // num_heads, mlp_dim=4 * d_model,
              causal=True)


class ChannelARHead(nn.Module):
  """p(x_{i,c} | h_i, x_{i,<c}): a causal transformer over the C channels of each position.

  (h (..., d), codes (..., C) int in [0, bins)) -> logits (..., C, bins); output c depends on
  h and codes[..., :c] only (codes[..., C-1] is never read).
  """
  bins: int
  d_model: int
  num_layers: int
  num_heads: int

  @nn.compact
  def __call__(self, h: jax.Array, codes: jax.Array) -> jax.Array:
    lead, channels = codes.shape[:-1], codes.shape[-1]
    cond = DenseGeneral((self.d_model,), (None, "embed"), use_bias=True, name="cond")(h)
    prev = Embed(self.bins, self.d_model, name="bin_embed")(codes[..., :-1])
    x = jnp.concatenate([cond[..., None, :], prev], axis=-2)        # (..., C, d)
    x = x.reshape(-1, channels, self.d_model)
    x = TransformerStack(self.num_layers, _block(self.d_model, self.num_heads),
                         name="channels")(x)
    logits = DenseGeneral((self.bins,), ("embed", None), use_bias=True, name="out")(x)
    return logits.reshape(*lead, channels, self.bins)


class TokenBridgeModule(nn.Module):
  """The causal spatial backbone and one head.

  tokens: channel_ar (B, N, C) int bins; flow (B, N, C) float standardised latents; softmax
  (B, N) int codes. `condition(tokens, labels)` -> h (B, N, d): position i sees the class
  and tokens[:, :i]. `__call__` is the training forward pass (logits, or the flow loss).
  """
  cfg: TokenBridgeConfig
  channels: int
  num_codes: int

  def setup(self):
    cfg = self.cfg
    self.class_embed = Embed(cfg.num_classes, cfg.d_model)
    if cfg.head == "channel_ar":
      # One table of channels x bins rows: a token's embedding is the sum over its channels.
      self.token_embed = Embed(self.channels * cfg.bins, cfg.d_model)
      self.head = ChannelARHead(cfg.bins, cfg.d_model, cfg.head_layers, cfg.num_heads)
    elif cfg.head == "flow":
      self.token_embed = DenseGeneral((cfg.d_model,), (None, "embed"), use_bias=True)
      self.head = FlowHead(cfg.flow_width, cfg.flow_depth)
    else:
      self.token_embed = Embed(self.num_codes, cfg.d_model)
      self.head = DenseGeneral((self.num_codes,), ("embed", None), use_bias=True)
    self.backbone = TransformerStack(cfg.num_layers, _block(cfg.d_model, cfg.num_heads))

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    if self.cfg.head == "channel_ar":
      offsets = jnp.arange(self.channels) * self.cfg.bins
      return jnp.sum(self.token_embed(tokens + offsets), axis=-2)
    return self.token_embed(tokens)

  def condition(self, tokens: jax.Array, labels: jax.Array) -> jax.Array:
    x = self.embed_tokens(tokens)                                     # (B, N, d)
    start = self.class_embed(labels)[:, None]
    return self.backbone(jnp.concatenate([start, x[:, :-1]], axis=1))

  def __call__(self, tokens: jax.Array, labels: jax.Array, noise: jax.Array | None = None,
               t: jax.Array | None = None) -> jax.Array:
    """channel_ar: logits (B, N, C, bins); softmax: (B, N, codes); flow: the scalar flow-
    matching loss of noise/t (B, N, C)/(B, N)."""
    h = self.condition(tokens, labels)
    if self.cfg.head == "channel_ar":
      return self.head(h, tokens)
    if self.cfg.head == "flow":
      return flow_matching_loss(lambda x, s: self.head(x, s, h), noise, tokens, t)
    return self.head(h)

  def head_logits(self, h: jax.Array, codes: jax.Array) -> jax.Array:
    return self.head(h, codes)

  def velocity(self, x: jax.Array, t: jax.Array, h: jax.Array) -> jax.Array:
    return self.head(x, t, h)

  def softmax_logits(self, h: jax.Array) -> jax.Array:
    return self.head(h)


def standardize_stats(latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) of latents (..., C), float32."""
  flat = np.asarray(latents, np.float64).reshape(-1, latents.shape[-1])
  return flat.mean(0).astype(np.float32), np.maximum(flat.std(0), 1e-6).astype(np.float32)


@register_method("tokenbridge")
class TokenBridge(Method):
  """See the module docstring."""
  Config = TokenBridgeConfig

  def __init__(self, config: TokenBridgeConfig):
    if config.head not in HEADS:
      raise ConfigError(f"config.model.head='{config.head}'; use one of {HEADS}")
    if not config.tokenizer_workdir:
      raise ConfigError("config.model.tokenizer_workdir is empty; train a tokenizer first "
                        "(experiments/tokenbridge.py:stage=tokenizer) and point it there")
    super().__init__(config)
    from tokenlab.train.inference import load_frozen_tokenizer
    self.tokenizer = load_frozen_tokenizer(config.tokenizer_workdir)
    tok = self.tokenizer.config.model
    continuous = tok.quantizer == "kl"
    if continuous != (config.head != "softmax"):
      raise ConfigError(f"head '{config.head}' needs a "
                        f"{'continuous (latent=kl)' if config.head != 'softmax' else 'VQ'} "
                        f"tokenizer; {config.tokenizer_workdir} has quantizer "
                        f"'{tok.quantizer}'")
    self.channels = int(tok.latent_dim) if continuous else 1
    self.num_codes = 0 if continuous else int(self.tokenizer.method.codebook_size)
    self.quantizer = GaussianQuantile(self.channels, config.bins)
    self.mean = self.std = None
    if continuous:
      self.mean, self.std = standardize_stats(self._training_latents(config.stats_images))
    self.module = TokenBridgeModule(config, self.channels, self.num_codes)

  # ------------------------------------------------------------------ tokens

  def _training_latents(self, count: int) -> np.ndarray:
    from tokenlab.evals.image_samples import load_split
    data = self.tokenizer.config.data
    images = load_split(data.name, "train", dict(data.get("options", {}) or {}))["image"]
    return np.asarray(jax.jit(self.tokenizer.encode)(images[:count]))

  def latents(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, ch) -> standardised continuous latents (B, N, C)."""
    z = self.tokenizer.encode(images)
    return ((z - self.mean) / self.std).reshape(z.shape[0], -1, self.channels)

  def tokens(self, images: jax.Array) -> jax.Array:
    """The modelled tokens: channel_ar (B, N, C) bins, flow (B, N, C) latents, softmax (B, N)
    codes."""
    if self.config.head == "softmax":
      codes = self.tokenizer.encode(images)
      return codes.reshape(codes.shape[0], -1)
    x = self.latents(images)
    return self.quantizer(x).codes if self.config.head == "channel_ar" else x

  def decode(self, tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Tokens as `tokens` returns them -> images (B, H, W, ch) in [0, 1] through the frozen
    decoder (channel_ar: bin centres; flow: the latents, unstandardised)."""
    b = tokens.shape[0]
    if self.config.head == "softmax":
      return self.tokenizer.decode(tokens.reshape(b, *grid))
    x = self.quantizer.decode(tokens) if self.config.head == "channel_ar" else tokens
    z = x.reshape(b, *grid, self.channels) * self.std + self.mean
    return self.tokenizer.decode(z)

  def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
    return self.tokenizer.method.grid(image_hw)

  def bits_per_position(self) -> float:
    return float(self.quantizer.bits_per_token if self.config.head != "softmax"
                 else np.log2(self.num_codes))

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    tokens = jax.eval_shape(self.tokens, batch["image"])
    dummy = jnp.zeros(tokens.shape, tokens.dtype)
    labels = jnp.zeros(batch["image"].shape[:1], jnp.int32)
    extra = {}
    if self.config.head == "flow":
      extra = dict(noise=dummy, t=jnp.zeros(dummy.shape[:2]))
    # An "unsafe_rbg" key seeded by `rng`: cheaper to compile than threefry on CPU (as
    # image_tokenizer's init).
    seed = jax.random.randint(rng, (), 0, np.iinfo(np.int32).max)
    rng = jax.random.key(seed, impl="unsafe_rbg")
    return self.module.init(rng, dummy, labels, **extra)["params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    images, labels = batch["image"], batch["label"].astype(jnp.int32)
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    tokens = jax.lax.stop_gradient(self.tokens(images))
    if self.config.head == "flow":
      k_noise, k_t = jax.random.split(rng)
      noise = jax.random.normal(k_noise, tokens.shape)
      t = jax.random.uniform(k_t, tokens.shape[:2])
      # Padded eval rows are rare (last batch); the flow loss is a plain mean over rows.
      loss = self.module.apply({"params": params}, tokens, labels, noise, t)
      return loss, {"loss": Average.of(loss * count, count)}
    logits = self.module.apply({"params": params}, tokens, labels).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    per_image = jnp.sum(nll.reshape(nll.shape[0], -1), -1)            # nats per image
    loss = jnp.sum(per_image * mask) / count / np.prod(tokens.shape[1:])
    bits = per_image / np.log(2.0)
    return loss, {"loss": Average.of(loss * count, count),
                  "bits_per_image": Average.of(jnp.sum(bits * mask), count)}

  # ------------------------------------------------------------------ sampling

  def generate_tokens(self, params: PyTree, labels: jax.Array, rng: jax.Array,
                      num_positions: int) -> jax.Array:
    """Class-conditional tokens (B, N[, C]) for labels (B,), positions in raster order, each
    from the head given the backbone's condition on the class and the positions before."""
    cfg, module, b = self.config, self.module, labels.shape[0]
    apply = lambda fn, *a: module.apply({"params": params}, *a, method=fn)
    if cfg.head == "softmax":
      buf = jnp.zeros((b, num_positions), jnp.int32)
    elif cfg.head == "channel_ar":
      buf = jnp.zeros((b, num_positions, self.channels), jnp.int32)
    else:
      buf = jnp.zeros((b, num_positions, self.channels), jnp.float32)

    def position(i, carry):
      buf, rng = carry
      rng, key = jax.random.split(rng)
      h = apply(TokenBridgeModule.condition, buf, labels)
      h = jax.lax.dynamic_index_in_dim(h, i, 1, keepdims=False)       # (B, d)
      if cfg.head == "softmax":
        logits = apply(TokenBridgeModule.softmax_logits, h)
        token = sample_logits(logits, key, temperature=cfg.temperature).astype(jnp.int32)
      elif cfg.head == "channel_ar":
        def channel(c, state):
          codes, key = state
          key, sub = jax.random.split(key)
          logits = apply(TokenBridgeModule.head_logits, h, codes)[:, c]
          draw = sample_logits(logits, sub, temperature=cfg.temperature).astype(jnp.int32)
          return codes.at[:, c].set(draw), key
        token, _ = jax.lax.fori_loop(0, self.channels, channel,
                                     (jnp.zeros((b, self.channels), jnp.int32), key))
      else:
        velocity = lambda x, t: apply(TokenBridgeModule.velocity, x, t, h)
        token = euler_sample(velocity, jax.random.normal(key, (b, self.channels)),
                             cfg.flow_steps)
      return buf.at[:, i].set(token), rng

    buf, _ = jax.lax.fori_loop(0, num_positions, position, (buf, rng))
    return buf

  def generate(self, params: PyTree, labels: jax.Array, rng: jax.Array,
               image_hw: tuple[int, int]) -> jax.Array:
    """labels (B,) -> images (B, H, W, ch) in [0, 1]."""
    grid = self.grid(image_hw)
    tokens = self.generate_tokens(params, labels, rng, grid[0] * grid[1])
    return self.decode(tokens, grid)

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """(2, B, H, W, ch): the batch's images above samples of their labels (`tokenlab
    sample`)."""
    images = batch["image"]
    out = self.generate(params, batch["label"].astype(jnp.int32), rng, images.shape[1:3])
    return jnp.stack([images, out])
