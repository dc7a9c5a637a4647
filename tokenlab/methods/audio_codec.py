"""Audio codec: a small SoundStream / EnCodec-style neural codec (Zeghidour et al. 2021,
arXiv 2107.03312; Defossez et al. 2022, arXiv 2210.13438) on log-mel frames, the acoustic
tokenizer of the Discrete Audio Tokens survey in miniature (Mousavi et al. 2025, arXiv
2506.10274, paper #17) and of the speech LMs built on it (FireRedTTS-2's RVQ tokens).

log-mel (B, T, M) at 100 Hz (the `speech` pipeline's 10 ms hop) -> normalised -> 1-D conv
encoder, stride 2 per stage down to the token rate (2 stages: 25 Hz, 3: 12.5 Hz) -> latents
z (B, t, D) -> quantizer -> codes (B, t) or (B, t, K) -> 1-D conv decoder (nearest 2x
upsampling + convs per stage) -> log-mel (B, t * 2^S, M).

What follows the papers: the encoder / quantizer / decoder shape of SoundStream and EnCodec
(strided convolutional encoder, residual blocks, a mirrored upsampling decoder); residual
VQ (`quantizer='rvq'`: K levels, each an EMA codebook with dead-code restart from batch
vectors, the SoundStream recipe; FireRedTTS-2's tokenizer is RVQ too) with a commitment
loss; and, as the survey's scalar-quantizer arm, FSQ (`quantizer='fsq'`, Mentzer et al.
2023: no codebook, per-dimension levels). Bitrate = frame rate x sum over levels of log2
(codebook size), the survey's formula.

Simplified, and why:
- Mel in, mel out, not waveform: a waveform codec (24 kHz samples, strides 2-8 to 75 Hz)
  needs hours of accelerator training; on 2 CPU cores in minutes only a mel codec learns.
  Waveforms come back through Griffin-Lim (`to_waveform`, tokenlab/nn/audio.py): its
  estimated phase, not the codec, bounds SI-SNR against the original audio, so mel-L1 is
  the codec's own measure.
- Loss: mel L1 + `mse_weight` x mel MSE (on normalised log-mel) + `quantizer_weight` x the
  quantizer's loss. No adversarial (multi-scale STFT discriminator) or feature-matching
  loss, and no waveform-domain multi-resolution STFT loss: they matter for waveform realism,
  which a mel codec does not produce.
- No quantizer dropout (SoundStream's bitrate scalability): each bitrate is its own model
  (`experiments/audio_codec.py` option `bitrate`).

Padding. An utterance's valid mel frames are those before `mel_lengths` (on rows with batch
`mask` 1); the loss, the metrics, the EMA codebook updates, the dead-code restarts and the
code statistics count valid frames / tokens only (a token is valid when its first frame
is). Blocks normalise per frame (no statistics over time), so padding changes a valid
frame's output only through the convolutions' receptive field at the utterance's end.

API (the contract the speech LMs and the audio report use; no trainer involved):
`encode(variables, batch_or_mel) -> int32 codes (B, t)` (fsq) or `(B, t, K)` (rvq), t =
ceil(T / 2^S); `decode(variables, codes) -> log-mel (B, t * 2^S, M)`; `reconstruct`;
`to_waveform(log_mel)`; `num_tokens(mel_lengths)`; `method.frame_rate_hz`,
`method.codebook_sizes` (one entry per level), `method.bits_per_second`. `variables` is
`{'params': ..., **state}`; `tokenlab.train.inference.load_frozen_tokenizer(workdir)` binds
them to a trained run.
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
from tokenlab.method import Average, Batch, Method, PyTree, as_variables
from tokenlab.nn import audio
from tokenlab.nn.quantizers import FSQ, STATS, Quantized, ResidualVQ
from tokenlab.registry import register_method

QUANTIZERS = ("rvq", "fsq")
MEL_FRAME_RATE_HZ = 100.0   # the speech pipeline's mel: 160-sample hop at 16 kHz
SAMPLE_RATE, N_FFT, HOP = 16_000, 400, 160


@dataclasses.dataclass(frozen=True)
class AudioCodecConfig:
  mel_bins: int = 80              # must equal config.data.mel_bins
  width: int = 64                 # channels of the first stage
  channel_mult: tuple = (1, 2)    # one stride-2 stage per entry: token rate 100 / 2^len Hz
  res_blocks: int = 1             # residual blocks per stage
  quantizer: str = "rvq"          # rvq | fsq
  latent_dim: int = 32            # rvq vector size (fsq: len(fsq_levels))
  codebook_size: int = 256        # rvq entries per level
  rvq_levels: int = 4
  fsq_levels: tuple = (8, 5, 5, 5)
  commitment_cost: float = 0.25
  ema_decay: float = 0.99
  dead_after: int = 0             # restart an RVQ code unused this many updates (0 = never)
  mse_weight: float = 1.0
  quantizer_weight: float = 1.0


normalise, denormalise = audio.normalise_log_mel, audio.denormalise_log_mel
MEL_SCALE = audio.MEL_SCALE


class AudioCodecModule(nn.Module):
  """Encoder, quantizer and decoder over normalised log-mel; methods below are `apply`
  entry points."""
  cfg: AudioCodecConfig

  def setup(self):
    cfg = self.cfg
    mults = tuple(cfg.channel_mult)
    self.encoder = audio.ConvEncoder1D(cfg.width, mults, latent_size(cfg), cfg.res_blocks)
    self.decoder = audio.ConvDecoder1D(cfg.width, mults, cfg.mel_bins, cfg.res_blocks)
    self.quantizer = make_quantizer(cfg)

  def encode_latents(self, x: jax.Array) -> jax.Array:
    """Normalised log-mel (B, T, M), T a multiple of 2^S -> z (B, T / 2^S, D)."""
    return self.encoder(x)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """codes (B, t[, K]) -> normalised log-mel (B, t 2^S, M)."""
    return self.decoder(self.quantizer.decode(codes))

  def quantize(self, x: jax.Array, token_mask: jax.Array | None = None,
               train: bool = False) -> Quantized:
    return self.quantizer(self.encoder(x), train=train, mask=token_mask)

  def __call__(self, x: jax.Array, token_mask: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, Quantized]:
    """-> (normalised reconstruction (B, T, M), the quantizer's Quantized)."""
    q = self.quantize(x, token_mask, train)
    return self.decoder(q.values), q


def latent_size(cfg: AudioCodecConfig) -> int:
  return len(cfg.fsq_levels) if cfg.quantizer == "fsq" else cfg.latent_dim


def make_quantizer(cfg: AudioCodecConfig) -> nn.Module:
  if cfg.quantizer == "fsq":
    return FSQ(tuple(cfg.fsq_levels))
  return ResidualVQ(codebook_size=cfg.codebook_size, dim=cfg.latent_dim,
                    commitment_cost=cfg.commitment_cost, ema=True, decay=cfg.ema_decay,
                    dead_after=cfg.dead_after, levels=cfg.rvq_levels)


def masked_mel_errors(recon: jax.Array, target: jax.Array,
                      frame_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sum of |recon - target|, sum of squares, number of elements) over valid frames.

  recon, target (B, T, M); frame_mask (B, T) in {0, 1}. A frame of mask 0 contributes
  nothing whatever its values (padding never counts)."""
  m = frame_mask.astype(jnp.float32)[..., None]
  diff = (recon - target).astype(jnp.float32)
  count = jnp.sum(m) * recon.shape[-1]
  return jnp.sum(jnp.abs(diff) * m), jnp.sum(jnp.square(diff) * m), count


@register_method("audio_codec")
class AudioCodec(Method):
  """A mel codec trained on reconstruction; see the module docstring."""
  Config = AudioCodecConfig

  def __init__(self, config: AudioCodecConfig):
    if config.quantizer not in QUANTIZERS:
      raise ConfigError(f"config.model.quantizer='{config.quantizer}'; audio_codec uses one "
                        f"of {QUANTIZERS}")
    if not config.channel_mult:
      raise ConfigError("config.model.channel_mult is empty; give one entry per stride-2 "
                        "stage, e.g. (1, 2) for 25 Hz tokens")
    if config.quantizer == "rvq" and (config.rvq_levels < 1 or config.codebook_size < 2):
      raise ConfigError(f"config.model.rvq_levels={config.rvq_levels} and codebook_size="
                        f"{config.codebook_size}: need >= 1 level of >= 2 codes")
    if config.quantizer == "fsq" and (not config.fsq_levels
                                      or min(config.fsq_levels) < 2):
      raise ConfigError(f"config.model.fsq_levels={config.fsq_levels}: every level must "
                        f"be >= 2")
    super().__init__(config)
    self.module = AudioCodecModule(config)
    # The RVQ codebooks are EMA state, not parameters: the trainer carries them.
    self.state_collections = (STATS,) if config.quantizer == "rvq" else ()
    if config.quantizer == "rvq":
      self.codebook_sizes = (config.codebook_size,) * config.rvq_levels
    else:
      self.codebook_sizes = (int(np.prod(config.fsq_levels)),)
    self.codebook_size = self.codebook_sizes[0]
    self.bits_per_token = float(sum(math.log2(k) for k in self.codebook_sizes))

  # -------------------------------------------------------------------- rates and sizes

  @property
  def downsampling(self) -> int:
    """Mel frames per token."""
    return 2 ** len(self.config.channel_mult)

  @property
  def frame_rate_hz(self) -> float:
    """Tokens per second (per level)."""
    return MEL_FRAME_RATE_HZ / self.downsampling

  @property
  def bits_per_second(self) -> float:
    """Frame rate x sum over levels of log2(codebook size)."""
    return self.frame_rate_hz * self.bits_per_token

  def num_tokens(self, mel_lengths: Any) -> Any:
    """Valid tokens of utterances with `mel_lengths` valid frames: ceil(lengths / 2^S)."""
    return (mel_lengths + self.downsampling - 1) // self.downsampling

  # ------------------------------------------------------------------------ inputs

  def _frames(self, batch_or_mel: Batch | jax.Array) -> audio.MelFrames:
    return audio.mel_frames(batch_or_mel, self.config.mel_bins, self.downsampling,
                            "audio_codec")

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    f = self._frames(batch)
    variables = self.module.init({"params": rng}, normalise(f.mel), f.token_mask)
    if not self.state_collections:
      return variables["params"]
    return {"params": variables["params"], STATS: variables[STATS]}

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array, state: PyTree = None):
    """(loss, metrics) or, with EMA codebooks (rvq), (loss, metrics, new state)."""
    f = self._frames(batch)
    mutable = list(self.state_collections) or False
    out = self.module.apply(as_variables(params, state), normalise(f.mel), f.token_mask,
                            train=True, rngs={"quantizer": rng}, mutable=mutable)
    (recon, q), new_state = out if mutable else (out, None)
    loss, metrics = self._loss_and_metrics(f, recon, q)
    return (loss, metrics) if new_state is None else (loss, metrics, dict(new_state))

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array,
                   state: PyTree = None) -> dict[str, Any]:
    f = self._frames(batch)
    recon, q = self.module.apply(as_variables(params, state), normalise(f.mel), f.token_mask)
    return self._loss_and_metrics(f, recon, q)[1]

  def _loss_and_metrics(self, f: audio.MelFrames, recon: jax.Array, q: Quantized):
    l1, sq, count = masked_mel_errors(recon, normalise(f.mel), f.frame_mask)
    n = jnp.maximum(count, 1.0)
    loss = l1 / n + self.config.mse_weight * sq / n + self.config.quantizer_weight * q.loss
    metrics = {
        "loss": Average.of(loss * n, n),
        # In log-mel units (natural log of mel power), comparable across tokenizers.
        "mel_l1": Average.of(l1 * MEL_SCALE, count),
        "mel_mse": Average.of(sq * MEL_SCALE ** 2, count),
        "quantizer_loss": q.loss,
        "usage": q.metrics["usage"], "perplexity": q.metrics["perplexity"],
        "bits_per_second": jnp.asarray(self.bits_per_second, jnp.float32),
    }
    if "restarted" in q.metrics:
      metrics["restarted"] = q.metrics["restarted"]
    return loss, metrics

  # -------------------------------------------------------------- tokenizer interface

  def encode(self, variables: PyTree, batch_or_mel: Batch | jax.Array) -> jax.Array:
    """A batch (its 'mel', 'mel_lengths', 'mask') or log-mel (B, T, M) -> int32 codes
    (B, t) (fsq) or (B, t, K) (rvq), t = ceil(T / 2^S). Tokens from `num_tokens(mel_lengths)`
    on cover padding."""
    f = self._frames(batch_or_mel)
    q = self.module.apply(variables, normalise(f.mel), f.token_mask,
                          method=AudioCodecModule.quantize)
    return q.codes

  def decode(self, variables: PyTree, codes: jax.Array) -> jax.Array:
    """codes from `encode` -> log-mel (B, t * 2^S, M) (natural log of mel power)."""
    out = self.module.apply(variables, codes, method=AudioCodecModule.decode_codes)
    return denormalise(out)

  def reconstruct(self, variables: PyTree, batch_or_mel: Batch | jax.Array) -> jax.Array:
    """The eval forward pass: log-mel (B, T, M) of the input's T frames (equal to
    decode(encode(x))[:, :T])."""
    f = self._frames(batch_or_mel)
    recon, _ = self.module.apply(variables, normalise(f.mel), f.token_mask)
    return denormalise(recon)[:, :f.frames]

  # `tokenlab sample`: the rows of `sample`, named in the WAV files it writes.
  sample_rows = ("input", "vocoder", "codec")

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array,
             state: PyTree = None) -> dict[str, jax.Array]:
    """Listening to the codec: {'waveform': (3, B, S), 'lengths': (3, B)}, the rows
    `sample_rows`: the input audio; Griffin-Lim of the input's own log-mel (the vocoder's
    bound: what a perfect codec would give); Griffin-Lim of the codec's reconstruction."""
    wave = jnp.asarray(batch["waveform"], jnp.float32)
    f = self._frames(batch)
    recon = self.reconstruct(as_variables(params, state), batch)
    both = jnp.stack([f.mel[:, :f.frames], recon])          # (2, B, T, M)
    vocoded = self.to_waveform(both, wave.shape[-1], rng=rng)
    lengths = jnp.broadcast_to(jnp.asarray(batch["lengths"], jnp.int32), (3, wave.shape[0]))
    return {"waveform": jnp.concatenate([wave[None], vocoded]), "lengths": lengths}

  @staticmethod
  def to_waveform(log_mel: jax.Array, num_samples: int | None = None, n_iter: int = 32,
                  rng: jax.Array | None = None) -> jax.Array:
    """log-mel (..., T, M) from `decode` -> 16 kHz waveform (..., num_samples) by mel
    inversion and Griffin-Lim (tokenlab/nn/audio.py); its phase is estimated, which bounds
    SI-SNR against the original audio."""
    return audio.mel_to_waveform(log_mel, SAMPLE_RATE, N_FFT, HOP, num_samples, n_iter,
                                 rng=rng)


def mean_mel_baseline(data_config: Any) -> dict[str, float]:
  """The trivial codec (zero bits): every valid validation frame predicted as the training
  split's mean log-mel per bin. Returns {'mel_l1', 'mel_mse'} in log-mel units over valid
  frames, the floor a codec's eval/mel_l1 must clear to carry information."""
  from tokenlab import data as data_lib  # pylint: disable=g-import-not-at-top

  def frames(split):
    for batch in data_lib.make_iterator(data_config, split=split, batch_size=16, seed=0,
                                        shuffle=False, num_epochs=1):
      valid = ((np.arange(batch["mel"].shape[1])[None] < batch["mel_lengths"][:, None])
               & (batch["mask"][:, None] > 0))
      yield batch["mel"][valid]

  mean = np.concatenate(list(frames("train"))).mean(axis=0)
  val = np.concatenate(list(frames("validation")))
  return {"mel_l1": float(np.abs(val - mean).mean()),
          "mel_mse": float(np.square(val - mean).mean())}
