"""ECHOPulse: ECG-conditioned video generation with a video tokenizer and a masked (MaskGIT)
transformer. Li et al., "ECHOPulse: ECG Controlled Echocardiograms Video Generation",
arXiv 2410.03143 (reference code: levyisthebest/ECHOPulse_Prelease, a Phenaki-style C-ViViT
tokenizer and MaskGit transformer).

The method, in the paper's order:

1. Video tokenizer. A VQ autoencoder with factorised spatial and causal temporal attention
   maps a clip (T, H, W, C) to a grid of t x h x w discrete codes and back. Here: tokenlab's
   shared `video_tokenizer` method (tokenlab/methods/video_tokenizer.py), trained first and
   then frozen (`tokenizer_workdir`, loaded by `load_frozen_tokenizer`); `encode_clips` also
   takes a per-frame `image_tokenizer` (codes (T, h, w) per clip).
2. Condition. The ECG time series, one value per video frame (the `pulse` dataset's
   `signal`, (T,)), is embedded: each sample by a linear map, plus a learned temporal
   position, through `signal_layers` bidirectional transformer layers (`SignalEncoder`) ->
   a context (T, d). The paper uses a pretrained ECG foundation model (ST-MEM); nothing may
   be downloaded here, so the encoder is small and trained with the generator.
3. Generator. A bidirectional transformer over the N = t * h * w codes in raster order
   (code embedding + factorised learned (t, h, w) positions), every layer a
   `CrossAttentionBlock` (tokenlab/nn/cross_attention.py: self-attention, cross-attention
   to the ECG context, MLP), a K-way head. Training is MaskGIT's: per clip r ~ U(0, 1),
   ceil(N cos(pi r / 2)) codes replaced by the mask token (`maskgit.training_mask`),
   cross-entropy on the masked codes. Condition dropout: with probability `cond_dropout`
   (0.25, the paper's) a clip's context is replaced by a learned null context, so one
   network is both the conditional and the unconditional model.
4. Sampling. MaskGIT iterative decoding (tokenlab/nn/maskgit.py `maskgit_decode`): from an
   all-masked grid, `maskgit_steps` parallel steps with the cosine schedule, confidence =
   log p(sampled) + annealed Gumbel noise; classifier-free guidance null + s (cond - null)
   (s = `cfg_scale`, 3 in the paper). The baseline decoder (`decoder="token_by_token"`,
   `maskgit.ordered_decode`) runs the same network left to right, one code per network
   evaluation (N evaluations against MaskGIT's T): the comparison the paper's speed claim
   rests on, at equal model. The frozen tokenizer decodes codes to frames.

Follows the paper: a discrete video tokenizer with causal temporal attention; MaskGIT
training with the cosine mask ratio and iterative decoding; cross-attention from the video
tokens to an ECG embedding; condition dropout 0.25; classifier-free guidance null +
s (cond - null).
Simplified, and why: toy scale (a 16 x 16 blob whose radius follows an ECG-like signal, a
2-layer d=64 generator over a few dozen codes, trained minutes on a 2-core CPU; the paper:
ECHO videos at 128 x 128 and larger); 8 decoding steps (the paper ~18) because the grid has
64 codes rather than thousands; the ECG encoder is trained from scratch with one value per
frame (no ST-MEM, no raw 500 Hz ECG); learned factorised positions instead of C-ViViT's
continuous position bias; no perceptual or GAN loss in the tokenizer (tokenlab's tokenizers
are MSE-trained: nothing pretrained may be downloaded); token-by-token decoding reuses the
masked network rather than training a separate causal model, so the decoders differ only in
their order and number of evaluations (a causal model with a KV cache would make each
token-by-token step cheaper; see BUILD_NOTES "Image benchmarks" for that comparison).
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
from tokenlab.nn.cross_attention import CrossAttentionBlock
from tokenlab.nn.layers import DenseGeneral, Embed, RMSNorm, param_with_axes
from tokenlab.nn.maskgit import maskgit_decode, ordered_decode, training_mask
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

DECODERS = ("maskgit", "token_by_token")


@dataclasses.dataclass(frozen=True)
class EchoPulseConfig:
  grid: tuple[int, int, int] = (16, 2, 2)   # (t, h, w) of the tokenizer's code grid
  codebook_size: int = 64         # K codes; the mask token is K
  num_frames: int = 16            # T samples of the condition (one per video frame)
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 0                # 0 = 8/3 d_model (SwiGLU)
  signal_layers: int = 1          # transformer layers of the ECG encoder
  cond_dropout: float = 0.25      # the paper's condition dropout (trains the null model)
  # sampling
  maskgit_steps: int = 8
  cfg_scale: float = 3.0          # null + s (cond - null); 1 = conditional, no guidance
  temperature: float = 1.0
  choice_temperature: float = 4.5
  # where the codes come from (`iterator_fns`, `sample`)
  tokenizer_workdir: str = ""     # a video_tokenizer run on `pulse`: its clips are the data


def default_mlp(d: int) -> int:
  return int(8 * d / 3) // 8 * 8


# ---------------------------------------------------------------------------------------------
# The model.


class SignalEncoder(nn.Module):
  """ECG embedding: signal (B, T) -> context (B, T, d); with `null` (B,) bool, those rows get
  the learned null context instead (condition dropout, the unconditional model)."""
  cfg: EchoPulseConfig

  @nn.compact
  def __call__(self, signal: jax.Array, null: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    d, frames = cfg.d_model, cfg.num_frames
    x = DenseGeneral((d,), (None, "embed"), use_bias=True, name="sample_embed")(
        signal.astype(jnp.float32)[..., None])
    x = x + param_with_axes(self, "time_embed", nn.initializers.normal(0.02), (frames, d),
                            (None, "embed"), jnp.float32)
    block = dict(num_heads=cfg.num_heads, head_dim=d // cfg.num_heads,
                 mlp_dim=cfg.mlp_dim or default_mlp(d), causal=False, use_rope=False)
    x = TransformerStack(cfg.signal_layers, block, name="body")(x)
    if null is None:
      return x
    null_context = param_with_axes(self, "null_context", nn.initializers.normal(0.02),
                                   (frames, d), (None, "embed"), jnp.float32)
    return jnp.where(null[:, None, None], null_context[None], x)


class MaskedVideoTransformer(nn.Module):
  """codes (B, N) (the mask token = K allowed) and context (B, T, d) -> logits (B, N, K)."""
  cfg: EchoPulseConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.cfg
    t, h, w = cfg.grid
    d = cfg.d_model
    x = Embed(cfg.codebook_size + 1, d, name="code_embed")(tokens)
    # Factorised learned 3-D positions: pos_t[i] + pos_h[j] + pos_w[k] for code (i, j, k).
    pos = lambda name, n: param_with_axes(self, name, nn.initializers.normal(0.02), (n, d),
                                          (None, "embed"), jnp.float32)
    grid_pos = (pos("pos_t", t)[:, None, None] + pos("pos_h", h)[None, :, None]
                + pos("pos_w", w)[None, None, :]).reshape(t * h * w, d)
    x = x + grid_pos[None].astype(x.dtype)
    for i in range(cfg.num_layers):
      x = CrossAttentionBlock(cfg.num_heads, d // cfg.num_heads, cfg.mlp_dim or default_mlp(d),
                              name=f"layer_{i}")(x, context)
    x = RMSNorm(name="final_norm")(x)
    return DenseGeneral((cfg.codebook_size,), ("embed", "vocab"), name="head")(x)


class EchoPulseModule(nn.Module):
  """(tokens (B, N), signal (B, T), null (B,) bool) -> logits (B, N, K)."""
  cfg: EchoPulseConfig

  def setup(self):
    self.encoder = SignalEncoder(self.cfg, name="signal_encoder")
    self.generator = MaskedVideoTransformer(self.cfg, name="generator")

  def __call__(self, tokens: jax.Array, signal: jax.Array, null: jax.Array) -> jax.Array:
    return self.generator(tokens, self.encoder(signal, null))

  def context(self, signal: jax.Array, null: jax.Array) -> jax.Array:
    return self.encoder(signal, null)

  def logits(self, tokens: jax.Array, context: jax.Array) -> jax.Array:
    return self.generator(tokens, context)


# ---------------------------------------------------------------------------------------------
# The method (trainer contract).


@register_method("echopulse")
class EchoPulse(Method):
  """ECG-conditioned MaskGIT over a frozen video tokenizer's codes; see the module docstring.
  Batches: codes (B, N) int32 (raster order over (t, h, w)), signal (B, T) float32, optional
  mask (B,)."""
  sample_kind = "video"    # `tokenlab sample` writes its clips as a GIF / PNG strip
  Config = EchoPulseConfig

  def __init__(self, config: EchoPulseConfig):
    if len(config.grid) != 3 or min(config.grid) < 1:
      raise ConfigError(f"config.model.grid={config.grid} must be the tokenizer's (t, h, w)")
    if not 0.0 <= config.cond_dropout < 1.0:
      raise ConfigError(f"config.model.cond_dropout={config.cond_dropout} must be in [0, 1)")
    if config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} must be divisible by "
                        f"num_heads={config.num_heads}")
    super().__init__(config)
    self.module = EchoPulseModule(config)
    self.num_tokens = int(np.prod(config.grid))
    self.mask_id = config.codebook_size
    self._tokenizer = None

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    codes = batch["codes"]
    if codes.shape[-1] != self.num_tokens or batch["signal"].shape[-1] != self.config.num_frames:
      raise ConfigError(f"batches have {codes.shape[-1]} codes and {batch['signal'].shape[-1]} "
                        f"signal samples per clip, but config.model.grid={self.config.grid} "
                        f"({self.num_tokens}) and num_frames={self.config.num_frames}; set them "
                        f"to the tokenizer's grid and the clips' frame count")
    b = codes.shape[0]
    # Initialisation draws from an "unsafe_rbg" key seeded by `rng`: threefry's per-parameter
    # key derivations made this init's compile several times slower on XLA:CPU (as the
    # image tokenizer measured, BUILD_NOTES "Image tokenizer").
    rng = jax.random.key(jax.random.randint(rng, (), 0, np.iinfo(np.int32).max),
                         impl="unsafe_rbg")
    return self.module.init(rng, jnp.zeros((b, self.num_tokens), jnp.int32),
                            jnp.zeros((b, self.config.num_frames)), jnp.zeros((b,), bool))["params"]

  def masked_ce(self, params: PyTree, batch: Batch, rng: jax.Array, cond_dropout: float,
                null: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(per-clip mean CE over the masked codes (B,), per-clip accuracy there (B,), masked (B, N))
    with MaskGIT's cosine training masks; `null` forces the null condition on those rows."""
    codes = batch["codes"].astype(jnp.int32)
    b = codes.shape[0]
    r_mask, r_drop = jax.random.split(rng)
    masked = training_mask(r_mask, b, self.num_tokens)
    if null is None:
      null = (jax.random.bernoulli(r_drop, cond_dropout, (b,)) if cond_dropout
              else jnp.zeros((b,), bool))
    logits = self.module.apply({"params": params}, jnp.where(masked, self.mask_id, codes),
                               batch["signal"], null).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, codes[..., None], -1)[..., 0]
    count = jnp.sum(masked, -1)
    ce = jnp.sum(jnp.where(masked, nll, 0.0), -1) / count
    acc = jnp.sum(jnp.where(masked, jnp.argmax(logits, -1) == codes, False), -1) / count
    return ce, acc, masked

  def _average(self, batch: Batch, per_clip: jax.Array) -> tuple[jax.Array, Average]:
    mask = batch.get("mask", jnp.ones(per_clip.shape)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    total = jnp.sum(per_clip * mask)
    return total / count, Average.of(total, count)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """MaskGIT cross-entropy (nats per masked code, averaged per clip) with condition dropout."""
    ce, acc, _ = self.masked_ce(params, batch, rng, self.config.cond_dropout)
    loss, avg = self._average(batch, ce)
    return loss, {"loss": avg, "masked_accuracy": self._average(batch, acc)[1]}

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, Any]:
    """loss with the condition always given, and loss_null: the same masks with the null
    condition (their gap is what the condition tells the model about the codes)."""
    ce, acc, _ = self.masked_ce(params, batch, rng, 0.0)
    null = jnp.ones(batch["codes"].shape[:1], bool)
    ce_null, _, _ = self.masked_ce(params, batch, rng, 0.0, null=null)
    return {"loss": self._average(batch, ce)[1],
            "masked_accuracy": self._average(batch, acc)[1],
            "loss_null": self._average(batch, ce_null)[1]}

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per code (6 x matmul parameters + attention over N codes and T context
    entries); the ECG encoder's share (T positions per clip) is counted per code."""
    c = self.config
    d, mlp, n = c.d_model, c.mlp_dim or default_mlp(c.d_model), self.num_tokens
    per_layer = 4 * d * d + 4 * d * d + 3 * d * mlp            # self, cross, MLP
    encoder = c.signal_layers * (4 * d * d + 3 * d * mlp) * c.num_frames / n
    matmul = c.num_layers * per_layer + d * c.codebook_size + encoder
    return 6.0 * matmul + 3.0 * c.num_layers * 2 * d * (n + c.num_frames)

  # ------------------------------------------------------------------------- sampling

  def network_evaluations(self, decoder: str, steps: int | None = None,
                          tokens_per_step: int = 1) -> int:
    """Calls of the network to generate one grid: MaskGIT's steps, or N / tokens_per_step in
    raster order (a guided call runs the conditional and null rows as one batch: one
    evaluation)."""
    if decoder not in DECODERS:
      raise ConfigError(f"decoder '{decoder}' unknown; use one of {DECODERS}")
    if decoder == "maskgit":
      return steps or self.config.maskgit_steps
    return self.num_tokens // tokens_per_step

  def sample_codes(self, params: PyTree, signal: jax.Array, rng: jax.Array, *,
                   decoder: str = "maskgit", condition: bool = True,
                   cfg_scale: float | jax.Array | None = None, steps: int | None = None,
                   tokens_per_step: int = 1) -> jax.Array:
    """Codes (B, t, h, w) for the condition signal (B, T).

    decoder: "maskgit" (`steps`, default maskgit_steps) or "token_by_token" (raster order,
      `tokens_per_step` codes per network evaluation; 1 = autoregressive order).
    condition: False = the unconditional model (the null context for every row, no guidance).
    cfg_scale: default config.cfg_scale; a Python 1.0 (or a False `condition`) runs the
      conditional rows alone; an array scale always runs guided (so one compiled program
      serves every scale: 0 gives the null model's logits, 1 the conditional model's).
    """
    cfg = self.config
    self.network_evaluations(decoder)                  # validates the decoder's name
    scale = cfg.cfg_scale if cfg_scale is None else cfg_scale
    signal = jnp.asarray(signal, jnp.float32)
    b = signal.shape[0]
    apply = lambda method, *a: self.module.apply({"params": params}, *a, method=method)
    guided = condition and (isinstance(scale, jax.Array) or scale != 1.0)
    if guided:   # [conditional; null] rows, one batch (tokenlab.nn.generate.guided_logits)
      context = apply(EchoPulseModule.context, jnp.concatenate([signal, signal]),
                      jnp.arange(2 * b) >= b)
    else:
      context = apply(EchoPulseModule.context, signal, jnp.full((b,), not condition))

    def logits_fn(tokens: jax.Array) -> jax.Array:
      return apply(EchoPulseModule.logits, tokens, context)

    kw = dict(mask_id=self.mask_id, rng=rng, temperature=cfg.temperature,
              cfg_scale=scale if guided else None)
    if decoder == "maskgit":
      codes = maskgit_decode(logits_fn, (b, self.num_tokens), steps or cfg.maskgit_steps,
                             choice_temperature=cfg.choice_temperature, **kw)
    else:
      codes = ordered_decode(logits_fn, (b, self.num_tokens), tokens_per_step=tokens_per_step,
                             **kw)
    return codes.reshape(b, *cfg.grid)

  def tokenizer(self):
    """The frozen tokenizer of `tokenizer_workdir` (loaded once)."""
    if self._tokenizer is None:
      if not self.config.tokenizer_workdir:
        raise ConfigError("config.model.tokenizer_workdir is empty; point it at a trained "
                          "video_tokenizer run on the pulse dataset")
      from tokenlab.train.inference import load_frozen_tokenizer
      self._tokenizer = load_frozen_tokenizer(self.config.tokenizer_workdir)
    return self._tokenizer

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """`tokenlab sample`: clips (B, T, H, W, C) generated for the batch's signals (MaskGIT,
    guided), decoded by the frozen tokenizer."""
    return decode_codes(self.tokenizer(), self.sample_codes(params, batch["signal"], rng))


# ---------------------------------------------------------------------------------------------
# Tokens of clips, and scores of generated clips against their condition.


def encode_clips(tokenizer, video: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """video (n, T, H, W, C) float in [0, 1] -> codes (n, t, h, w) int32 through a frozen
  tokenizer: a video tokenizer (its grid has 3 axes), or an image tokenizer frame by frame."""
  video = np.asarray(video, np.float32)
  n = len(video)
  per_frame = len(tokenizer.method.grid) == 2
  encode = _jitted_encode(tokenizer)
  chunk = batch_size
  out = []
  for i in range(0, n, chunk):
    x = video[i:i + chunk]
    # Pad every chunk to one shape: one compiled encoder for all splits and the last chunk.
    x = np.concatenate([x, np.zeros((chunk - len(x), *x.shape[1:]), x.dtype)])
    if per_frame:
      codes = np.asarray(encode(x.reshape(-1, *x.shape[2:]))).reshape(chunk, x.shape[1],
                                                                       *tokenizer.method.grid)
    else:
      codes = np.asarray(encode(x))
    out.append(codes[:min(chunk, n - i)])
  return np.concatenate(out).astype(np.int32)


_ENCODERS: dict[int, tuple[Any, Callable]] = {}


def _jitted_encode(tokenizer) -> Callable:
  """tokenizer.encode under jit, one per tokenizer (so one compile per tokenizer and shape)."""
  if id(tokenizer) not in _ENCODERS or _ENCODERS[id(tokenizer)][0] is not tokenizer:
    _ENCODERS[id(tokenizer)] = (tokenizer, jax.jit(tokenizer.encode))
  return _ENCODERS[id(tokenizer)][1]


def decode_codes(tokenizer, codes: jax.Array) -> jax.Array:
  """codes (B, t, h, w) -> clips (B, T, H, W, C) in [0, 1] (a per-frame image tokenizer
  decodes the t frames one by one)."""
  if len(tokenizer.method.grid) == 2:
    b, t = codes.shape[:2]
    frames = tokenizer.decode(jnp.reshape(codes, (b * t, *codes.shape[2:])))
    return jnp.reshape(frames, (b, t, *frames.shape[1:]))
  return tokenizer.decode(codes)


def pulse_options(options: Any = None) -> dict[str, Any]:
  """The pulse dataset's default options updated by `options` (a mapping)."""
  from tokenlab.evals.image_samples import merged_options
  return merged_options("pulse", dict(options or {}))


def tokenizer_options(tokenizer) -> dict[str, Any]:
  """The pulse options a frozen tokenizer was trained on (its clips are this method's data,
  so the two can never disagree on size, frames or fps)."""
  data = tokenizer.config.data
  if data.name != "pulse":
    raise ConfigError(f"the tokenizer in config.model.tokenizer_workdir was trained on "
                      f"'{data.name}'; echopulse needs a tokenizer trained on 'pulse'")
  options = data.get("options", None)
  return pulse_options(options.to_dict() if hasattr(options, "to_dict") else options)


def pulse_clips(split: str, options: dict[str, Any], count: int | None = None
                ) -> dict[str, np.ndarray]:
  """The first `count` (default: all) clips of a pulse split, generated in memory with the
  dataset's own code (the records `tokenlab data build pulse` writes): {'video' float32
  (n, T, H, W, 1) in [0, 1], 'signal' (n, T), 'radius' (n, T) pixels}."""
  from tokenlab.data import pulse
  n = options[f"num_{split}"] if count is None else count
  labels = [pulse.clip_labels(split, i, options) for i in range(n)]
  video = np.stack([pulse.render(l["radius"], options["size"]) for l in labels])
  return {"video": video.astype(np.float32) / 255.0,
          "signal": np.stack([l["signal"] for l in labels]),
          "radius": np.stack([l["radius"] for l in labels])}


def condition_scores(videos: np.ndarray, signal: np.ndarray, radius: np.ndarray
                     ) -> dict[str, float]:
  """How well clips (n, T, H, W, C) follow their condition: the blob radius read back from
  the pixels (`pulse.radius_from_pixels`) against the condition signal (n, T) and the radius
  the real clip with that signal has (n, T).

  Returns {'corr': Pearson correlation of read-back radius and signal over all (clip, frame)
  pairs (0 when the radii do not vary), 'mae': mean |read-back - true radius| in pixels}.
  """
  from tokenlab.data import pulse
  r = np.stack([pulse.radius_from_pixels(v) for v in np.asarray(videos)])
  return {"corr": pearson(r.ravel(), np.asarray(signal).ravel()),
          "mae": float(np.mean(np.abs(r - np.asarray(radius))))}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation of two 1-D arrays; 0 when either is constant (no linear relation
  can be read from it)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a, b = a - a.mean(), b - b.mean()
  denom = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
  return float(np.sum(a * b) / denom) if denom > 1e-12 else 0.0


# ---------------------------------------------------------------------------------------------
# Data: pulse clips encoded once by the frozen tokenizer (config.data.name = "method").


def encoded_split(tokenizer, split: str, options: dict[str, Any]) -> dict[str, np.ndarray]:
  """{'codes' (n, N) int32, 'signal' (n, T) float32} of a pulse split."""
  clips = pulse_clips(split, options)
  codes = encode_clips(tokenizer, clips["video"])
  return {"codes": codes.reshape(len(codes), -1), "signal": clips["signal"]}


def iterator_fns(config) -> tuple[Callable, Callable]:
  """(train_fn, eval_fn) over the pulse splits encoded by `model.tokenizer_workdir`."""
  from tokenlab.data.synthetic import ArrayIterator
  from tokenlab.registry import build_method
  method = build_method(config.model)
  tok = method.tokenizer()
  options = tokenizer_options(tok)
  train = encoded_split(tok, "train", options)
  val = encoded_split(tok, "validation", options)
  return (lambda b, s: ArrayIterator(train, b, s, train=True),
          lambda b, s: ArrayIterator(val, b, s, train=False))
