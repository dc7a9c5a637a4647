"""Pixel-, token- and scale-based autoregression under one harness: the comparison of the
survey "Autoregressive Models in Vision: A Survey" (Xiong et al., arXiv 2411.05902; paper list
github.com/ChaofanTao/Autoregressive-Models-in-Vision-Survey) in miniature.

The survey sorts visual AR models by what one step predicts (its Section 2/3):

1. Pixel-based (PixelRNN / PixelCNN / Image Transformer): the image's quantized intensities
   in raster order, one per step, p(x) = prod_i p(x_i | x_<i, class). The likelihood is exact
   and in the pixels' own units; sampling takes H x W x C sequential steps.
2. Token-based (VQ-VAE / VQGAN / LlamaGen): a frozen VQ tokenizer maps the image to an h x w
   grid of codes; a causal transformer models the codes in raster order after a class
   token. Fewer steps (h x w), but the likelihood is of the codes, not the pixels: the model's
   bits are a rate, and the tokenizer's reconstruction error is the distortion paid for it.
3. Scale-based (VAR, Tian et al. 2024): the image is a coarse-to-fine stack of residual maps
   r_1 (1 x 1), ..., r_K (H x W), each quantized; step k predicts all s_k^2 tokens of scale k
   at once, conditioned on the scales before (through down(f_hat_<k, s_k), the running
   reconstruction resampled to scale k), so sampling takes K steps.

Here (`family` = pixel | token | scale), on one dataset and with one transformer body
(tokenlab/nn/transformer.py; the same depth, width and heads, trained the same steps x
batch; see experiments/ar_vision.py):

- pixel: tokens = round(x (levels - 1)), `levels` intensities (17 for 8x8 digits, 256 for
  MNIST), class prefix token, causal; NLL exact; sampling with the key/value cache through
  tokenlab/nn/image_ar.py's `sample_image_tokens`.
- token: tokens = the codes of a frozen `image_tokenizer` run (`tokenizer_workdir`, loaded by
  tokenlab/train/inference.py's `load_frozen_tokenizer`); the same model and sampler; images
  = the tokenizer's decoder on the sampled codes.
- scale: VAR's next-scale prediction (tokenlab/nn/next_scale.py: `multiscale_quantize`,
  `next_scale_inputs`, `accumulate`) over scales (1, 2, 4, 8); the input at a scale-k
  position is the running reconstruction down(f_hat_<k, s_k) (a linear embedding plus a
  learned position embedding), position 0 is the class token; all tokens of a scale are
  drawn at once (tokenlab/nn/generate.py's `sample_logits`), K forward passes.

Follows the survey / VAR exactly: the three factorisations, teacher forcing, VAR's residual
multi-scale quantization with area downsampling and one codebook shared by all scales, VAR's
inputs down(f_hat_<k), class-token conditioning, sampling of all tokens of a scale in parallel.

Simplified, and why:
- The scale family's "latent" is the pixel grid itself, with an exact scalar codebook: the 2
  (levels - 1) + 1 residual intensities (-1 .. 1 in steps of 1/(levels - 1)) and nearest
  upsampling, so the last scale makes f_hat = x exactly and the model's NLL of the image's
  pyramid is an upper bound on -log p(x) (the pyramid is a function of x; the model may also
  put mass on other pyramids summing to x). VAR runs on a VQ tokenizer trained with
  multi-scale residual quantization, which tokenlab does not have (its image_tokenizer is
  single-scale); on pixels the scale family's likelihood is comparable with the pixel
  family's, and its samples need no decoder. VAR's bicubic upsampling and "phi" conv are
  left out (nearest keeps the residuals on the intensity grid).
- Attention is causal in raster order for every family. VAR's mask is block-causal (a token
  also sees the later inputs of its own scale); both leak nothing about scale k's tokens,
  since every input of scale k is a function of the scales before. Sampling keeps VAR's
  key/value cache across scales (tokenlab/nn/attention.py's decode mode takes a chunk per
  step).
- Tiny sizes (8x8 digits, a 2-layer d=64 body) so that a run fits a 2-core CPU; no
  classifier-free guidance, top-k or temperature tuning (one setting, temperature 1, for every
  family, so the comparison has no per-family tuning); RoPE over the flattened sequence.
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
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.decode import init_cache
from tokenlab.nn.generate import sample_logits
from tokenlab.nn.image_ar import prefix_sequence, prefix_vocab_size, sample_image_tokens
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.next_scale import (accumulate, codebook_quantizer, flatten_scales,
                                    multiscale_quantize, next_scale_inputs, reconstruct,
                                    token_counts, unflatten_scales)
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

FAMILIES = ("pixel", "token", "scale")
LN2 = math.log(2.0)
UP = "nearest"      # keeps scale residuals on the intensity grid (module docstring)


@dataclasses.dataclass(frozen=True)
class ArVisionConfig:
  family: str = "pixel"           # pixel | token | scale
  num_classes: int = 10
  image_size: int = 8             # H = W
  channels: int = 1
  levels: int = 17                # pixel intensities (digits 0..16; MNIST 256)
  scales: tuple = (1, 2, 4, 8)    # scale family: sides, the last = image_size
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 0                # 0 = 8/3 d_model (SwiGLU)
  temperature: float = 1.0
  tokenizer_workdir: str = ""     # token family: a trained image_tokenizer run


def residual_levels(levels: int) -> np.ndarray:
  """The scale family's shared scalar codebook (2 (levels - 1) + 1,): every residual
  intensity -1 .. 1 in steps of 1 / (levels - 1) (code j <-> (j - (levels - 1)) / (levels - 1))."""
  n = levels - 1
  return (np.arange(2 * n + 1) - n).astype(np.float32) / n


class ArVisionModule(nn.Module):
  """tokens (B, L) [, values (B, L, 1)] -> logits (B, L, vocab) over the family's codes.

  tokens < vocab are codes, vocab + c the class-c prefix, vocab + C the null class
  (tokenlab/nn/image_ar.py's layout). Scale family: `values` replaces every position but the
  first (the class token) by a linear embedding of the running reconstruction plus a learned
  position embedding. Causal; `decode=True` keeps a key/value cache (sampling: one token per
  step for pixel / token, one scale's chunk of tokens per step for scale).
  """
  cfg: ArVisionConfig
  vocab: int
  length: int
  decode: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, values: jax.Array | None = None,
               offset: int = 0) -> jax.Array:
    """`offset` (static): the sequence position of tokens[:, 0] (a decode-mode chunk)."""
    cfg, d = self.cfg, self.cfg.d_model
    x = Embed(prefix_vocab_size(self.vocab, cfg.num_classes), d, name="embed")(tokens)
    if cfg.family == "scale":
      if values is None:
        values = jnp.zeros(tokens.shape + (1,), jnp.float32)
      pos = offset + jnp.arange(tokens.shape[1])
      v = DenseGeneral((d,), (None, "embed"), use_bias=True, name="value_embed")(values)
      v = v + Embed(self.length, d, name="position_embed")(pos)
      x = jnp.where((pos == 0)[None, :, None], x, v)
    block = dict(num_heads=cfg.num_heads, head_dim=d // cfg.num_heads,
                 mlp_dim=cfg.mlp_dim or default_mlp(d), causal=True)
    x = TransformerStack(cfg.num_layers, block, decode=self.decode, name="body")(x)
    return DenseGeneral((self.vocab,), ("embed", "vocab"), name="head")(x)


def default_mlp(d: int) -> int:
  return int(8 * d / 3) // 8 * 8


@register_method("ar_vision")
class ArVision(Method):
  """One class-conditional AR model per family (module docstring). Batches: image
  (B, H, W, C) in [0, 1], label (B,), optional mask (B,)."""
  Config = ArVisionConfig

  def __init__(self, config: ArVisionConfig, tokenizer: Any = None):
    """`tokenizer`: an object like `FrozenTokenizer` (encode, decode, method.grid,
    method.codebook_size) used instead of loading `tokenizer_workdir` (tests)."""
    if config.family not in FAMILIES:
      raise ConfigError(f"config.model.family='{config.family}'; use one of {FAMILIES}")
    super().__init__(config)
    self._tokenizer = tokenizer
    size, ch = config.image_size, config.channels
    self.dims = size * size * ch                  # pixel dimensions per image (bits/dim)
    if config.family == "pixel":
      self.vocab, self.length = config.levels, self.dims
    elif config.family == "token":
      tok = self.tokenizer()
      self.grid = tok.method.grid((size, size))
      self.vocab, self.length = int(tok.method.codebook_size), self.grid[0] * self.grid[1]
    else:
      scales = tuple(config.scales)
      if ch != 1 or scales[-1] != size or list(scales) != sorted(set(scales)):
        raise ConfigError(f"family='scale' needs one channel and increasing scales ending at "
                          f"image_size={size}; got channels={ch}, scales={scales}")
      self.table = residual_levels(config.levels)
      self.vocab, self.length = len(self.table), sum(token_counts(scales))
    self.module = ArVisionModule(config, self.vocab, self.length)

  # ------------------------------------------------------------------ tokens

  def tokenizer(self):
    """The frozen tokenizer of `tokenizer_workdir` (token family; loaded once)."""
    if self._tokenizer is None:
      if not self.config.tokenizer_workdir:
        raise ConfigError("family='token' needs config.model.tokenizer_workdir: a trained "
                          "experiments/ar_vision.py:stage=tokenizer run")
      from tokenlab.train.inference import load_frozen_tokenizer
      self._tokenizer = load_frozen_tokenizer(self.config.tokenizer_workdir)
    return self._tokenizer

  def tokens(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) in [0, 1] -> the modelled codes (B, length) int32: intensities in
    raster order (pixel), tokenizer codes (token), or the residual pyramid's codes, coarse to
    fine, each scale in raster order (scale)."""
    b, n = images.shape[0], self.config.levels - 1
    if self.config.family == "pixel":
      return jnp.round(images * n).astype(jnp.int32).reshape(b, -1)
    if self.config.family == "token":
      return self.tokenizer().encode(images).reshape(b, -1).astype(jnp.int32)
    quantize = codebook_quantizer(jnp.asarray(self.table)[:, None])
    codes, _, _, _ = multiscale_quantize(images, self.config.scales, quantize, up_method=UP)
    return flatten_scales(codes).astype(jnp.int32)

  def images(self, codes: jax.Array) -> jax.Array:
    """codes (B, length) -> images (B, H, W, C) in [0, 1]."""
    cfg, b = self.config, codes.shape[0]
    if cfg.family == "pixel":
      x = codes.astype(jnp.float32) / (cfg.levels - 1)
      return x.reshape(b, cfg.image_size, cfg.image_size, cfg.channels)
    if cfg.family == "token":
      return self.tokenizer().decode(codes.reshape(b, *self.grid))
    return jnp.clip(reconstruct(self._scale_values(codes), cfg.image_size, up_method=UP),
                    0.0, 1.0)

  def _scale_values(self, codes: jax.Array) -> list[jax.Array]:
    """(B, length) pyramid codes -> per-scale residual values (B, s, s, 1)."""
    table = jnp.asarray(self.table)
    return [table[c][..., None] for c in unflatten_scales(codes, self.config.scales)]

  def _inputs(self, codes: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Teacher-forcing inputs: tokens (B, length) [class; codes[:-1]] (pixel / token), or
    [class; 0 ...] with values (B, length, 1) = [0; down(f_hat_<k, s_k) ...] (scale)."""
    cfg = self.config
    if cfg.family != "scale":
      return prefix_sequence(codes, labels, self.vocab, cfg.num_classes)[:, :-1], None
    tokens = jnp.zeros_like(codes).at[:, 0].set(labels + self.vocab)
    inputs = next_scale_inputs(self._scale_values(codes), cfg.scales, up_method=UP)
    values = jnp.concatenate([jnp.zeros_like(inputs[:, :1]), inputs], axis=1)
    return tokens, values

  def nll(self, params: PyTree, codes: jax.Array, labels: jax.Array) -> jax.Array:
    """(B,) nats per image: -sum_i log p(code_i | class, what comes before i). Pixel: the
    exact NLL of the image; token: of its codes; scale: of its pyramid (an upper bound on the
    image's, module docstring)."""
    tokens, values = self._inputs(codes, labels)
    logits = self.module.apply({"params": params}, tokens, values).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, codes[..., None], -1)[..., 0], axis=-1)

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    b = batch["image"].shape[0]
    tokens = jnp.zeros((b, self.length), jnp.int32)
    values = jnp.zeros((b, self.length, 1)) if self.config.family == "scale" else None
    # An "unsafe_rbg" key seeded by `rng` (cheaper to compile on CPU, as image_tokenizer's).
    seed = jax.random.randint(rng, (), 0, np.iinfo(np.int32).max)
    return self.module.init(jax.random.key(seed, impl="unsafe_rbg"), tokens, values)["params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Mean NLL per modelled position (nats) over the (unpadded) images; metrics
    nll_bits_per_image and bits_per_dim (bits per image / pixel dimensions)."""
    del rng
    labels = batch["label"].astype(jnp.int32)
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    codes = jax.lax.stop_gradient(self.tokens(batch["image"]))
    nll = self.nll(params, codes, labels)
    loss = jnp.sum(nll * mask) / count / self.length
    bits = jnp.sum(nll * mask) / LN2
    return loss, {"loss": Average.of(loss * count, count),
                  "nll_bits_per_image": Average.of(bits, count),
                  "bits_per_dim": Average.of(bits / self.dims, count)}

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, Any]:
    return self.loss(params, batch, rng)[1]

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per position: 6 x matmul parameters (body, head, the scale family's
    value embedding) + causal attention over (L + 1) / 2 keys on average."""
    c = self.config
    d, mlp = c.d_model, c.mlp_dim or default_mlp(c.d_model)
    matmul = c.num_layers * (4 * d * d + 3 * d * mlp) + d * self.vocab
    return 6.0 * matmul + 3.0 * c.num_layers * 4 * d * (seq_len + 1) / 2

  def train_flops_per_image(self) -> float:
    """Training FLOPs of one image (its `length` positions), the tokenizer not counted."""
    return self.flops_per_token(self.length) * self.length

  # ------------------------------------------------------------------ sampling

  def sample_codes(self, params: PyTree, labels: jax.Array, rng: jax.Array) -> jax.Array:
    """Class-conditional codes (B, length): one per step with the key/value cache (pixel,
    token), or one scale per step (scale); temperature `temperature`, no guidance."""
    cfg = self.config
    labels = jnp.asarray(labels, jnp.int32)
    if cfg.family != "scale":
      return sample_image_tokens(self.module, params, labels, rng, num_tokens=self.length,
                                 num_codes=self.vocab, num_classes=cfg.num_classes,
                                 temperature=cfg.temperature, cached=True)
    return self._sample_scales(params, labels, rng)

  def _sample_scales(self, params: PyTree, labels: jax.Array, rng: jax.Array) -> jax.Array:
    """VAR's generation, with its key/value cache: step k feeds scale k's inputs (the class
    token, then down(f_hat_<k, s_k)) as one chunk, draws all s_k^2 tokens of scale k at once,
    adds up(values_k) to f_hat and resamples f_hat to the next scale: K steps, each token's
    keys/values computed once (as in training, causal over the flattened sequence)."""
    cfg, b, scales = self.config, labels.shape[0], tuple(self.config.scales)
    bounds = np.cumsum((0,) + token_counts(scales))
    table = jnp.asarray(self.table)
    decoder = self.module.clone(decode=True)
    cache = init_cache(decoder, b, self.length)
    tokens = (labels + self.vocab)[:, None]                          # scale 1: the class
    values = jnp.zeros((b, 1, 1), jnp.float32)
    f_hat = jnp.zeros((b, cfg.image_size, cfg.image_size, 1), jnp.float32)
    codes = []
    for k, s in enumerate(scales):
      rng, key = jax.random.split(rng)
      logits, updated = decoder.apply({"params": params, "cache": cache}, tokens, values,
                                      int(bounds[k]), mutable=["cache"])
      cache = updated["cache"]
      c = sample_logits(logits.reshape(-1, self.vocab), key,
                        temperature=cfg.temperature).reshape(b, s, s).astype(jnp.int32)
      codes.append(c)
      last = k + 1 == len(scales)
      f_hat, nxt = accumulate(f_hat, table[c][..., None], None if last else scales[k + 1],
                              up_method=UP)
      if not last:
        values = nxt.reshape(b, -1, 1)
        tokens = jnp.zeros(values.shape[:2], jnp.int32)
    return flatten_scales(codes)

  def generate(self, params: PyTree, labels: jax.Array, rng: jax.Array) -> jax.Array:
    """labels (B,) -> images (B, H, W, C) in [0, 1]."""
    return self.images(self.sample_codes(params, labels, rng))

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """`tokenlab sample`: (2, B, H, W, C), the batch's images above samples of their labels."""
    out = self.generate(params, batch["label"].astype(jnp.int32), rng)
    return jnp.stack([batch["image"].astype(out.dtype), out])
