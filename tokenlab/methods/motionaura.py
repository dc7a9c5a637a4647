"""MotionAura (Susladkar et al., 2024, arXiv 2410.07659): video prediction by discrete diffusion
over the tokens of a 3-D VQ tokenizer, with a spectral (FFT-domain) transformer denoiser.

The paper's method, in its order, and what this module does with each part:

1. A 3-D VQ-VAE (the paper's 3D-MBQ-VAE) cuts a clip into a (t, h, w) grid of codebook
   indices; it is trained with *full-frame masking*: whole input frames are hidden from the
   encoder and the decoder must still reconstruct every frame. Here that is the shared
   `video_tokenizer` method (tokenlab/methods/video_tokenizer.py) with its
   `frame_mask_ratio`; this module only consumes a trained one, frozen
   (`config.model.tokenizer_workdir`, `tokenlab.train.inference.load_frozen_tokenizer`). The
   paper's mobile inverted-bottleneck blocks are not reproduced (the shared tokenizer's own
   blocks are used): simplified, because the claim under test is the masking, not the block.
2. Vector-quantized discrete diffusion (VQ-Diffusion, Gu et al. 2022) over those tokens:
   a forward process corrupts the tokens to be generated, a denoiser predicts the clean tokens
   x0, and the reverse process generates them step by step (`tokenlab.nn.discrete_diffusion`:
   absorbing-mask or uniform-replace process, x0-parameterisation, ancestral sampler). The
   paper conditions on text; at toy scale the condition is the first `context_frames` latent
   frames of the clip (video *prediction*: their tokens are given, never corrupted and never
   changed by the sampler, and the remaining frames are generated). Simplified: the loss is
   the x0 cross-entropy alone (no variational-bound term), stated in discrete_diffusion.py.
3. The denoiser is a *spectral transformer*: token mixing by an FFT over the (t, h, w) token
   grid with a learned complex filter (`tokenlab.nn.spectral.SpectralBlock`, GFNet-style),
   instead of self-attention. `denoiser='attention'` swaps in tokenlab's TransformerBlock
   (bidirectional, same width, depth and MLP) for the comparison. The paper's spectral block
   is described only loosely (its released code does not match the paper); the GFNet global
   filter is the standard form of "FFT-domain mixing" and is what is tested here. Both
   denoisers add a learned position embedding and a timestep embedding
   (`tokenlab.nn.vision.TimestepEmbedder`) to the token embeddings.
4. Sketch-guided inpainting with LoRA: not reproduced (no sketches in the toy data).

Data (`config.data.name = "method"`): the clips of a video dataset (default `moving_digits`)
encoded once by the frozen tokenizer into {'tokens' (B, t*h*w) int32}; a batch that already
carries 'tokens' (the reproduction encodes its own arrays) is used as it is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn import discrete_diffusion as dd
from tokenlab.nn.layers import DenseGeneral, Embed, RMSNorm, param_with_axes
from tokenlab.nn.spectral import SpectralBlock, attention_mixing_flops, spectral_mixing_flops
from tokenlab.nn.transformer import TransformerBlock
from tokenlab.nn.vision import TimestepEmbedder, default_mlp_dim
from tokenlab.registry import register_method

DENOISERS = ("spectral", "attention")


@dataclasses.dataclass(frozen=True)
class MotionAuraConfig:
  codebook_size: int = 64               # K codes of the tokenizer
  grid: tuple[int, int, int] = (4, 6, 6)  # (t, h, w) latent grid of one clip
  context_frames: int = 2               # latent frames given (never corrupted)
  denoiser: str = "spectral"            # spectral | attention
  process: str = "absorb"               # absorb | uniform (tokenlab.nn.discrete_diffusion)
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4                    # attention denoiser only
  mlp_dim: int = 0                      # 0: tokenlab.nn.vision.default_mlp_dim(d_model)
  sample_steps: int = 8                 # reverse-process steps
  schedule: str = "cosine"              # the reverse schedule (tokenlab.nn.maskgit)
  temperature: float = 1.0
  tokenizer_workdir: str = ""           # a trained video_tokenizer run (data and decoding)
  dataset: str = "moving_digits"        # clips the tokenizer encodes (config.data.name=method)
  dataset_options: Any = None           # dict of the dataset's options (None: defaults)


class Denoiser(nn.Module):
  """x_t tokens (B, N) int and levels t (B,) -> x0 logits (B, N, K).

  Embedding (K codes + the mask id) + learned positions + timestep embedding, `num_layers`
  spectral or attention blocks, a final RMSNorm and a linear head over the K codes."""
  config: MotionAuraConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, t: jax.Array) -> jax.Array:
    cfg = self.config
    n, d = tokens.shape[1], cfg.d_model
    mlp = cfg.mlp_dim or default_mlp_dim(d)
    x = Embed(dd.input_vocab_size(cfg.process, cfg.codebook_size), d, name="embed")(tokens)
    pos = param_with_axes(self, "positions", nn.initializers.normal(0.02), (n, d),
                          (None, "embed"), jnp.float32)
    # DiT's convention: the timestep embedding sees t in [0, 1000].
    x = x + pos[None] + TimestepEmbedder(d, name="time")(t * 1000.0)[:, None]
    for i in range(cfg.num_layers):
      if cfg.denoiser == "spectral":
        x = SpectralBlock(tuple(cfg.grid), mlp, name=f"block_{i}")(x)
      else:
        x = TransformerBlock(num_heads=cfg.num_heads, head_dim=d // cfg.num_heads,
                             mlp_dim=mlp, causal=False, use_rope=False, name=f"block_{i}")(x)
    x = RMSNorm(name="final_norm")(x)
    return DenseGeneral((cfg.codebook_size,), ("embed", "vocab"), name="head")(x)


@register_method("motionaura")
class MotionAura(Method):
  """Discrete diffusion video prediction over frozen 3-D tokenizer codes (module docstring)."""
  sample_kind = "video"    # `tokenlab sample` writes its clips as a GIF / PNG strip

  Config = MotionAuraConfig

  def __init__(self, config: MotionAuraConfig):
    super().__init__(config)
    if config.denoiser not in DENOISERS:
      raise ConfigError(f"config.model.denoiser='{config.denoiser}' unknown; use one of "
                        f"{', '.join(DENOISERS)}")
    if config.process not in dd.PROCESSES:
      raise ConfigError(f"config.model.process='{config.process}' unknown; use one of "
                        f"{', '.join(dd.PROCESSES)}")
    if len(config.grid) != 3 or not 0 < config.context_frames < config.grid[0]:
      raise ConfigError(f"config.model.grid={tuple(config.grid)} must be (t, h, w) and "
                        f"context_frames={config.context_frames} between 1 and t - 1, so that "
                        "some latent frames are given and some predicted")
    if config.denoiser == "attention" and config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} must divide into num_heads="
                        f"{config.num_heads}")
    self.module = Denoiser(config)
    self._tokenizer = None

  # ----------------------------------------------------------------------------- layout

  @property
  def num_tokens(self) -> int:
    return math.prod(self.config.grid)

  @property
  def mask_id(self) -> int:
    """The absorbing state's id: one past the K codes."""
    return self.config.codebook_size

  def known(self) -> np.ndarray:
    """(N,) bool: the context positions (the first context_frames latent frames; tokens in
    (t, h, w) row-major order)."""
    t, h, w = self.config.grid
    return np.arange(self.num_tokens) < self.config.context_frames * h * w

  def _tokens(self, batch: Batch) -> jax.Array:
    if "tokens" in batch:
      return jnp.asarray(batch["tokens"], jnp.int32).reshape(-1, self.num_tokens)
    if "video" in batch and self.config.tokenizer_workdir:
      codes = self.tokenizer().encode(batch["video"])
      return jnp.asarray(codes, jnp.int32).reshape(-1, self.num_tokens)
    raise ConfigError("a motionaura batch needs 'tokens' (B, t*h*w), or 'video' with "
                      "config.model.tokenizer_workdir set to a trained video tokenizer")

  # ----------------------------------------------------------------------------- training

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    tokens = self._tokens(batch)
    return self.module.init(rng, tokens, jnp.zeros(tokens.shape[:1], jnp.float32))["params"]

  def logits(self, params: PyTree, tokens: jax.Array, t: jax.Array) -> jax.Array:
    """x0 logits (B, N, K) of x_t tokens (B, N) at levels t (B,)."""
    return self.module.apply({"params": params}, tokens, t)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Mean x0 cross-entropy (nats per scored token) at a level t ~ U(0, 1) per clip; only
    the predicted frames are corrupted and scored."""
    cfg = self.config
    tokens = self._tokens(batch)
    rows = batch.get("mask", jnp.ones(tokens.shape[:1], jnp.float32))
    r_t, r_c = jax.random.split(rng)
    t = jax.random.uniform(r_t, tokens.shape[:1])
    eligible = jnp.logical_and(~jnp.asarray(self.known())[None], rows[:, None] > 0)
    x_t, _ = dd.corrupt(r_c, tokens, t, eligible, process=cfg.process,
                        vocab_size=cfg.codebook_size, mask_id=self.mask_id)
    weights = dd.loss_weights(x_t, eligible, process=cfg.process, mask_id=self.mask_id)
    nll, count, correct = dd.x0_cross_entropy(self.logits(params, x_t, t), tokens, weights)
    loss = nll / jnp.maximum(count, 1.0)
    return loss, {"loss": Average.of(nll, count), "x0_accuracy": Average.of(correct, count)}

  # ----------------------------------------------------------------------------- sampling

  def predict_tokens(self, params: PyTree, tokens: jax.Array, rng: jax.Array,
                     num_steps: int | None = None) -> jax.Array:
    """Given clips' tokens (B, N) (only the context positions are read), generates the other
    latent frames by the reverse process -> (B, N) int32, context unchanged."""
    cfg = self.config
    tokens = jnp.asarray(tokens, jnp.int32).reshape(-1, self.num_tokens)
    known = jnp.broadcast_to(jnp.asarray(self.known())[None], tokens.shape)
    logits_fn = lambda x, t: self.logits(params, x, t)
    return dd.sample(logits_fn, tokens, known, num_steps or cfg.sample_steps, rng,
                     process=cfg.process, vocab_size=cfg.codebook_size, mask_id=self.mask_id,
                     schedule=cfg.schedule, temperature=cfg.temperature)

  def tokenizer(self):
    """The frozen tokenizer of `config.model.tokenizer_workdir` (loaded once)."""
    if self._tokenizer is None:
      if not self.config.tokenizer_workdir:
        raise ConfigError("config.model.tokenizer_workdir is empty: name a trained "
                          "video_tokenizer run (tokenlab train --config "
                          "experiments/video_tokenizer.py ...)")
      from tokenlab.train.inference import load_frozen_tokenizer
      self._tokenizer = load_frozen_tokenizer(self.config.tokenizer_workdir)
    return self._tokenizer

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """`tokenlab sample`: the batch's clips with every frame after the context predicted,
    decoded by the frozen tokenizer -> video (B, T, H, W, C) in [0, 1]."""
    tokens = self.predict_tokens(params, self._tokens(batch), rng)
    return self.tokenizer().decode(tokens.reshape(-1, *self.config.grid))

  # ----------------------------------------------------------------------------- compute

  def denoiser_flops(self) -> dict[str, float]:
    """Forward FLOPs per clip of the token mixing, the MLPs and the head (analytic: 2 FLOPs
    per multiply-add; tokenlab.nn.spectral's counts for the mixing)."""
    cfg = self.config
    n, d = self.num_tokens, cfg.d_model
    mlp = cfg.mlp_dim or default_mlp_dim(d)
    mixing = (spectral_mixing_flops(tuple(cfg.grid), d) if cfg.denoiser == "spectral"
              else attention_mixing_flops(n, d))
    return {"mixing": cfg.num_layers * mixing, "mlp": cfg.num_layers * 6.0 * n * d * mlp,
            "head": 2.0 * n * d * cfg.codebook_size}


# ---------------------------------------------------------------------------------------------
# Data: a video dataset's clips encoded once by the frozen tokenizer (config.data.name =
# "method").


def encode_clips(encode: Callable[[np.ndarray], Any], video: np.ndarray, batch_size: int = 100
                 ) -> np.ndarray:
  """(N, t*h*w) int32 codes of clips (N, T, H, W, C) through `encode`, in batches."""
  fn = jax.jit(encode)
  codes = [np.asarray(fn(video[i:i + batch_size])) for i in range(0, len(video), batch_size)]
  codes = np.concatenate(codes)
  return codes.reshape(len(codes), -1).astype(np.int32)


def iterator_fns(config) -> tuple[Callable, Callable]:
  """(train_fn, eval_fn): the dataset's splits encoded by `model.tokenizer_workdir`."""
  from tokenlab.data.synthetic import ArrayIterator
  from tokenlab.evals.video_metrics import load_clips
  from tokenlab.registry import build_method
  method = build_method(config.model)
  tok = method.tokenizer()
  options = config.model.get("dataset_options") or {}
  options = options.to_dict() if hasattr(options, "to_dict") else dict(options)
  video = lambda s: load_clips(config.model.dataset, s, options)["video"] / np.float32(255)
  split = lambda s: {"tokens": encode_clips(tok.encode, video(s))}
  train, valid = split("train"), split("validation")
  return (lambda b, s: ArrayIterator(train, b, s, train=True),
          lambda b, s: ArrayIterator(valid, b, s, train=False))
