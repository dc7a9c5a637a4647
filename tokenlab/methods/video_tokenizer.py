"""Video tokenizer: a 3-D vector-quantized autoencoder whose integer codes on a
(latent frame, row, column) grid are the video tokens other methods model (issue 18's shared
block; ECHOPulse, MotionAura, VIOLET and TV2TV build on it).

video (B, T, H, W, C) in [0, 1] -> tubelets of `tubelet` frames x `patch_size`^2 pixels
(tokenlab/nn/video.py `patchify_3d`), linearly embedded -> [masking] -> factorised space-time
transformer -> latents z (B, t, h, w, D), t = T / tubelet, h = H / p, w = W / p -> quantizer
-> codes (B, t, h, w) (or (B, t, h, w, G) for G code streams: RVQ levels) -> a second
factorised transformer -> linear head to tubelet pixels -> `unpatchify_3d` -> reconstruction.

- Encoder and decoder are ViT-VQGAN-style (the image tokenizer's `arch="vit"`) made 3-D:
  each `SpaceTimeBlock` is spatial attention within a latent frame, temporal attention across
  latent frames at each (row, col), then the MLP (ViViT's factorised self-attention; the
  tokenizers of ECHOPulse, arXiv 2410.03143, and MAGVIT-v2). `causal_time=True` makes the
  temporal attention causal in both encoder and decoder, so codes and reconstruction of
  latent frame i depend on input frames of latent frames <= i only (MAGVIT-v2's causal
  tokenizer, which lets frame 0 be tokenized alone). Positions: fixed 3-D sin-cos, added to
  the tubelet embedding (encoder) and to the embedding of the quantized latents (decoder);
  `token_norm=True` RMS-normalises both embeddings first (our addition: at toy scale the
  0.02-normal embeddings are small against the positions and the codes then spend
  themselves on position; BUILD_NOTES "Video tokenizer" measures both).
- Quantizer (`quantizer`): the image tokenizer's, from tokenlab/nn/quantizers.py
  `make_quantizer`: `vq_ema` (EMA codebook + dead-code restart in the `vq_stats` collection:
  the method is then stateful), `vq`, `rvq` (stateful), `fsq`, `lfq`, `binary`.
- Masked tokenizer training (`frame_mask_ratio` > 0, train only): MotionAura (arXiv
  2410.07659) trains its 3-D VQ-VAE with whole frames masked at the input and the
  reconstruction loss on all frames, so the encoder must carry motion. Here the embedded
  tubelet tokens of round(ratio * t) whole latent frames per clip
  (tokenlab/nn/video_masking.py `frame_mask`) are replaced by one learned mask embedding
  (before the positions are added, so the model knows where the hole is); with
  `tubelet=1` that is exactly whole input frames. `mask_kind="patch"` masks the same
  fraction of random tubelet positions instead (`random_mask`), MotionAura's comparison.
  Simplified: the paper's masking is on pixels before 3-D convolutions; a token-level mask
  embedding is the transformer form of the same idea (MAE / BERT), and the exact schedule of
  the paper is not public (its code does not match the paper).
- Loss: MSE (+ `l1_weight` x L1) on every frame + `quantizer_weight` x the quantizer's loss.
  Simplified against VQGAN/MAGVIT: no perceptual or adversarial loss (toy scale, nothing
  pretrained may be downloaded), so reconstructions are blurrier at equal bits.
- Metrics: loss, mse, psnr (the mean over frames of each frame's PSNR of the clipped
  reconstruction), bits_per_clip (t h w x bits per position), usage, perplexity,
  quantizer_loss, masked_fraction (train).

API for other methods (no trainer involved), `variables` = `as_variables(params, state)`:
`encode(variables, video) -> codes` int32 (B, t, h, w[, G]); `decode(variables, codes) ->
video` (B, T, H, W, C) clipped to [0, 1]; `reconstruct(variables, video)`; `grid` (t, h, w),
`codebook_size`, `bits_per_token`, `bits_per_clip`. A trained run loads frozen with
`tokenlab.train.inference.load_frozen_tokenizer(workdir)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.evals.video_metrics import per_frame_psnr
from tokenlab.method import Average, Batch, Method, PyTree, as_variables
from tokenlab.nn.layers import DenseGeneral, RMSNorm, param_with_axes
from tokenlab.nn.quantizers import (STATEFUL_QUANTIZERS, STATS, Quantized, make_quantizer,
                                    quantizer_latent_size)
from tokenlab.nn.video import SpaceTimeTransformer, patchify_3d, unpatchify_3d
from tokenlab.nn.video_masking import frame_mask, random_mask
from tokenlab.nn.vision import default_mlp_dim
from tokenlab.registry import register_method

QUANTIZERS = ("vq_ema", "vq", "rvq", "fsq", "lfq", "binary")
MASK_KINDS = ("frame", "patch")


@dataclasses.dataclass(frozen=True)
class VideoTokenizerConfig:
  channels: int = 1               # frame channels (1: moving_digits, pulse; 3: moving_shapes)
  frames: int = 16                # T, frames per clip
  size: int = 32                  # H = W, frame side in pixels
  tubelet: int = 2                # frames per latent frame
  patch_size: int = 8             # pixels per token side
  d_model: int = 64
  num_layers: int = 2             # space-time blocks in the encoder and again in the decoder
  num_heads: int = 4
  causal_time: bool = False       # causal temporal attention (encoder and decoder)
  remat: str = "none"             # none | full | dots (accelerator sizes)
  # RMS-normalise the tubelet embedding (encoder) and the embedding of the quantized
  # latents (decoder) before the sin-cos positions are added: at init a 0.02-normal
  # embedding is ~0.1-0.2 RMS against positions of ~0.7, so the codes learn positions.
  token_norm: bool = False
  # quantizer (tokenlab/nn/quantizers.py make_quantizer)
  quantizer: str = "vq_ema"       # vq_ema | vq | rvq | fsq | lfq | binary
  latent_dim: int = 16            # vq / vq_ema / rvq vector size
  codebook_size: int = 256        # vq / vq_ema / rvq entries per codebook
  rvq_levels: int = 2
  fsq_levels: tuple = (8, 5, 5, 5)
  num_bits: int = 10              # lfq / binary bits per position
  commitment_cost: float = 0.25
  ema_decay: float = 0.99
  dead_after: int = 0             # restart a VQ code unused this many updates (0 = never)
  lfq_entropy_weight: float = 0.1
  # MotionAura-style masked training (train only; 0 = off)
  frame_mask_ratio: float = 0.0
  mask_kind: str = "frame"        # frame (whole latent frames) | patch (random tubelets)
  # loss
  l1_weight: float = 0.0
  quantizer_weight: float = 1.0


class VideoTokenizerModule(nn.Module):
  """Tubelet embedding, encoder, quantizer, decoder; the methods below are `apply` entries."""
  cfg: VideoTokenizerConfig

  def setup(self):
    cfg = self.cfg
    stack = dict(grid=self.grid, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                 head_dim=cfg.d_model // cfg.num_heads, mlp_dim=default_mlp_dim(cfg.d_model),
                 causal_time=cfg.causal_time, remat=cfg.remat)
    self.embed = DenseGeneral((cfg.d_model,), (None, "embed"), use_bias=True)
    self.mask_embedding = param_with_axes(self, "mask_embedding",
                                          nn.initializers.normal(0.02), (cfg.d_model,),
                                          ("embed",), jnp.float32)
    self.encoder = SpaceTimeTransformer(**stack)
    self.to_latent = DenseGeneral((quantizer_latent_size(cfg),), ("embed", None),
                                  use_bias=True)
    self.quantizer = make_quantizer(cfg)
    self.from_latent = DenseGeneral((cfg.d_model,), (None, "embed"), use_bias=True)
    if cfg.token_norm:
      self.embed_norm, self.latent_norm = RMSNorm(), RMSNorm()
    self.decoder = SpaceTimeTransformer(**stack)
    p = cfg.patch_size
    self.head = DenseGeneral((cfg.tubelet * p * p * cfg.channels,), ("embed", None),
                             use_bias=True)

  @property
  def grid(self) -> tuple[int, int, int]:
    cfg = self.cfg
    return cfg.frames // cfg.tubelet, cfg.size // cfg.patch_size, cfg.size // cfg.patch_size

  def embed_tokens(self, video: jax.Array,
                   token_mask: jax.Array | None = None) -> jax.Array:
    """video (B, T, H, W, C) in [0, 1] -> the encoder's input tokens (B, t*h*w, d_model)
    before positions; where token_mask (B, t, h, w) is True the token is the mask embedding."""
    x = self.embed(patchify_3d(video * 2.0 - 1.0, self.cfg.tubelet, self.cfg.patch_size))
    if self.cfg.token_norm:
      x = self.embed_norm(x)
    if token_mask is not None:
      flat = token_mask.reshape(x.shape[0], -1, 1)
      x = jnp.where(flat, self.mask_embedding.astype(x.dtype), x)
    return x

  def encode_latents(self, video: jax.Array,
                     token_mask: jax.Array | None = None) -> jax.Array:
    """(B, T, H, W, C) -> z (B, t, h, w, latent size), before quantization."""
    z = self.to_latent(self.encoder(self.embed_tokens(video, token_mask)))
    return z.reshape(video.shape[0], *self.grid, -1)

  def decode_values(self, values: jax.Array) -> jax.Array:
    """Quantized values (B, t, h, w, latent size) -> unclipped video (B, T, H, W, C)."""
    if self.cfg.quantizer == "binary":
      values = 2.0 * values - 1.0          # bits {0, 1} -> {-1, +1}
    b = values.shape[0]
    x = self.from_latent(values.reshape(b, -1, values.shape[-1]))
    if self.cfg.token_norm:
      x = self.latent_norm(x)
    x = self.decoder(x)
    cfg = self.cfg
    out = unpatchify_3d(self.head(x), cfg.tubelet, cfg.patch_size, cfg.frames, cfg.size,
                        cfg.size)
    return (out + 1.0) / 2.0

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """codes (B, t, h, w[, G]) -> unclipped video."""
    return self.decode_values(self.quantizer.decode(codes))

  def encode_codes(self, video: jax.Array) -> jax.Array:
    return self.quantizer(self.encode_latents(video), train=False).codes

  def __call__(self, video: jax.Array, train: bool = False,
               token_mask: jax.Array | None = None) -> tuple[jax.Array, Quantized]:
    """-> (unclipped reconstruction (B, T, H, W, C), the quantizer's Quantized)."""
    q = self.quantizer(self.encode_latents(video, token_mask), train=train)
    return self.decode_values(q.values), q


@register_method("video_tokenizer")
class VideoTokenizer(Method):
  """A 3-D VQ autoencoder trained on reconstruction; see the module docstring."""
  Config = VideoTokenizerConfig

  def __init__(self, config: VideoTokenizerConfig):
    _check_config(config)
    super().__init__(config)
    self.module = VideoTokenizerModule(config)
    # EMA codebooks are state, not parameters: the trainer carries them (method.py).
    self.state_collections = (STATS,) if config.quantizer in STATEFUL_QUANTIZERS else ()
    q = make_quantizer(config)
    self.bits_per_token = float(q.bits_per_token)
    self.codebook_size = int(q.codebook_size)

  @property
  def grid(self) -> tuple[int, int, int]:
    """The code grid (t, h, w) of one clip."""
    cfg = self.config
    return cfg.frames // cfg.tubelet, cfg.size // cfg.patch_size, cfg.size // cfg.patch_size

  @property
  def bits_per_clip(self) -> float:
    """Code positions x bits per position (all code streams)."""
    return float(np.prod(self.grid) * self.bits_per_token)

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    video = self._video(batch)
    # An "unsafe_rbg" key seeded by `rng`: init compiles several times faster on XLA:CPU than
    # with threefry (measured for the image tokenizer, BUILD_NOTES "Image tokenizer").
    seed = jax.random.randint(rng, (), 0, np.iinfo(np.int32).max)
    rng, q_rng = jax.random.split(jax.random.key(seed, impl="unsafe_rbg"))
    variables = self.module.init({"params": rng, "quantizer": q_rng}, video)
    if not self.state_collections:
      return variables["params"]
    return {"params": variables["params"], STATS: variables[STATS]}

  def token_mask(self, rng: jax.Array, batch_size: int) -> jax.Array | None:
    """The training mask (B, t, h, w) bool (True = masked) or None when masking is off."""
    cfg = self.config
    if cfg.frame_mask_ratio <= 0:
      return None
    t, h, w = self.grid
    if cfg.mask_kind == "frame":
      frames = frame_mask(rng, batch_size, t, cfg.frame_mask_ratio)
      return jnp.broadcast_to(frames[:, :, None, None], (batch_size, t, h, w))
    return random_mask(rng, (batch_size, t, h, w), cfg.frame_mask_ratio)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array, state: PyTree = None):
    """(loss, metrics) or, with an EMA codebook, (loss, metrics, new state)."""
    video = self._video(batch)
    q_rng, mask_rng = jax.random.split(rng)
    token_mask = self.token_mask(mask_rng, video.shape[0])
    mutable = list(self.state_collections) or False
    out = self.module.apply(as_variables(params, state), video, train=True,
                            token_mask=token_mask, rngs={"quantizer": q_rng}, mutable=mutable)
    (recon, q), new_state = out if mutable else (out, None)
    loss, metrics = self._loss_and_metrics(batch, recon, q)
    if token_mask is not None:
      metrics["masked_fraction"] = jnp.mean(token_mask.astype(jnp.float32))
    return (loss, metrics) if new_state is None else (loss, metrics, dict(new_state))

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array,
                   state: PyTree = None) -> dict[str, Any]:
    recon, q = self.module.apply(as_variables(params, state), self._video(batch), train=False)
    return self._loss_and_metrics(batch, recon, q)[1]

  def _loss_and_metrics(self, batch: Batch, recon: jax.Array, q: Quantized):
    video = batch["video"]
    b = video.shape[0]
    mask = batch.get("mask", jnp.ones((b,), jnp.float32)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    axes = (1, 2, 3, 4)
    per_clip = jnp.mean(jnp.square(recon - video), axis=axes)
    mse = per_clip
    if self.config.l1_weight:
      per_clip = per_clip + self.config.l1_weight * jnp.mean(jnp.abs(recon - video), axis=axes)
    loss = jnp.sum(per_clip * mask) / count + self.config.quantizer_weight * q.loss
    # Mean per-frame PSNR: each frame's PSNR, averaged over the frames of the real clips.
    frame_psnr = per_frame_psnr(video, recon)
    total = jnp.sum(mask)
    metrics = {
        "loss": Average.of(loss * total, total),
        "mse": Average.of(jnp.sum(mse * mask), total),
        "psnr": Average.of(jnp.sum(jnp.mean(frame_psnr, axis=1) * mask), total),
        "bits_per_clip": Average.of(self.bits_per_clip * total, total),
        "quantizer_loss": q.loss,
    }
    for key in ("usage", "perplexity", "restarted"):
      if key in q.metrics:
        metrics[key] = q.metrics[key]
    return loss, metrics

  def _video(self, batch: Batch) -> jax.Array:
    if "video" not in batch:
      raise ConfigError(f"video_tokenizer needs a video dataset (batches with 'video'), got "
                        f"a batch with {sorted(batch)}; set --config.data.name to "
                        f"moving_digits, moving_shapes or pulse")
    video = batch["video"]
    cfg = self.config
    want = (cfg.frames, cfg.size, cfg.size, cfg.channels)
    if tuple(video.shape[1:]) != want:
      raise ConfigError(f"the data's clips are (T, H, W, C) = {tuple(video.shape[1:])} but the "
                        f"tokenizer is configured for {want}; set config.model.frames, size "
                        f"and channels to the data's (experiments/video_tokenizer.py does)")
    return video

  # -------------------------------------------------------------- tokenizer interface

  def encode(self, variables: PyTree, video: jax.Array) -> jax.Array:
    """video (B, T, H, W, C) in [0, 1] -> codes (B, t, h, w) int32 ((B, t, h, w, L) rvq)."""
    return self.module.apply(variables, video, method=VideoTokenizerModule.encode_codes)

  def decode(self, variables: PyTree, codes: jax.Array) -> jax.Array:
    """codes from `encode` -> video (B, T, H, W, C) clipped to [0, 1]."""
    out = self.module.apply(variables, codes, method=VideoTokenizerModule.decode_codes)
    return jnp.clip(out, 0.0, 1.0)

  def reconstruct(self, variables: PyTree, video: jax.Array) -> jax.Array:
    """The eval-mode forward pass, clipped to [0, 1] (equal to decode(encode(video)))."""
    recon, _ = self.module.apply(variables, video, train=False)
    return jnp.clip(recon, 0.0, 1.0)

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array, *,
             state: PyTree = None) -> jax.Array:
    """(2, B, T, H, W, C): the batch's clips (row 0) above their reconstructions (row 1)."""
    del rng
    video = self._video(batch)
    return jnp.stack([video, self.reconstruct(as_variables(params, state), video)])


def _check_config(cfg: VideoTokenizerConfig) -> None:
  """One ConfigError naming the fix for a config that cannot build."""
  if cfg.quantizer not in QUANTIZERS:
    raise ConfigError(f"config.model.quantizer='{cfg.quantizer}'; use one of {QUANTIZERS}")
  if cfg.mask_kind not in MASK_KINDS:
    raise ConfigError(f"config.model.mask_kind='{cfg.mask_kind}'; use one of {MASK_KINDS}")
  if cfg.tubelet < 1 or cfg.frames % cfg.tubelet:
    raise ConfigError(f"config.model.frames={cfg.frames} does not split into tubelets of "
                      f"{cfg.tubelet} frames; pick a tubelet dividing the frames")
  if cfg.patch_size < 1 or cfg.size % cfg.patch_size:
    raise ConfigError(f"config.model.size={cfg.size} does not split into patches of "
                      f"{cfg.patch_size} pixels; pick a patch_size dividing the frame size")
  if cfg.d_model % cfg.num_heads or cfg.d_model % 2 or cfg.d_model < 6:
    raise ConfigError(f"config.model.d_model={cfg.d_model} must be even, >= 6 and divisible "
                      f"by num_heads={cfg.num_heads}")
  if not 0.0 <= cfg.frame_mask_ratio < 1.0:
    raise ConfigError(f"config.model.frame_mask_ratio={cfg.frame_mask_ratio} must be in "
                      f"[0, 1) (the share of latent frames masked in training)")
