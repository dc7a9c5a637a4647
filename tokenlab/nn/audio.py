"""Audio features in jax.numpy: STFT with a Hann window, mel filterbank, log-mel spectrogram.

One implementation, used by the `speech` data pipeline (`config.data.mel_bins`) and callable
on device inside a model. Conventions (those of scipy.signal.stft with boundary='zeros' and
of librosa's filterbank, which the tests check against independent formulas):

- the window is the periodic Hann window w[k] = 0.5 - 0.5 cos(2 pi k / n_fft);
- with `center`, the signal is zero-padded by n_fft // 2 on both sides, so frame t is
  centred on sample t * hop; frames = 1 + (S + 2 (n_fft // 2) - n_fft) // hop;
- power = |rfft(frame * window)|^2 (not normalised by the window sum);
- mel filters are triangles between mel-spaced edges from fmin to fmax, on the Slaney scale
  (linear below 1 kHz, logarithmic above) or HTK's (2595 log10(1 + f / 700)); with
  `norm`, each filter is divided by its width in Hz / 2 (Slaney's equal-area norm);
- log-mel = ln(max(mel power, eps)).

The way back (for codecs that decode to log-mel): `istft` (windowed overlap-add),
`mel_to_linear_power` (non-negative least squares through the filterbank), `griffin_lim`
(phase from magnitude) and `mel_to_waveform`, all three chained. Codec blocks: `Conv1D`,
`ResBlock1D`, `ConvEncoder1D` (stride-2 stages down to a token frame rate) and
`ConvDecoder1D` (upsampling back), over (B, frames, channels). `mel_frames` turns a
`speech` batch into log-mel padded to whole tokens with frame and token masks, and
`normalise_log_mel` scales log-mel for a network (fixed constants).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.layers import RMSNorm

_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz on the Slaney scale.
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hann_window(n: int) -> jnp.ndarray:
  """Returns the periodic Hann window, float32 (n,)."""
  return (0.5 - 0.5 * jnp.cos(2 * jnp.pi * jnp.arange(n) / n)).astype(jnp.float32)


def num_frames(num_samples: int, n_fft: int = 400, hop: int = 160, center: bool = True) -> int:
  """Returns the number of STFT frames of a signal of `num_samples` samples (>= 1 when
  centred; 0 when not centred and the signal is shorter than n_fft)."""
  padded = num_samples + (2 * (n_fft // 2) if center else 0)
  return max(0, 1 + (padded - n_fft) // hop) if padded >= n_fft else 0


def stft(x: jnp.ndarray, n_fft: int = 400, hop: int = 160, center: bool = True) -> jnp.ndarray:
  """Short-time Fourier transform with a Hann window.

  Args:
    x: float signal (..., S).
    n_fft: window and FFT length in samples (400 = 25 ms at 16 kHz).
    hop: samples between frames (160 = 10 ms at 16 kHz).
    center: zero-pad n_fft // 2 on both sides (frame t centred on sample t * hop).

  Returns:
    complex64 (..., frames, n_fft // 2 + 1), frames = `num_frames(S, n_fft, hop, center)`.
  """
  x = jnp.asarray(x, jnp.float32)
  if center:
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    x = jnp.pad(x, pad)
  frames = num_frames(x.shape[-1], n_fft, hop, center=False)
  # A gather of overlapping windows: (frames, n_fft) sample indices.
  idx = jnp.arange(frames)[:, None] * hop + jnp.arange(n_fft)[None, :]
  return jnp.fft.rfft(x[..., idx] * hann_window(n_fft), axis=-1)


def hz_to_mel(hz: np.ndarray, scale: str = "slaney") -> np.ndarray:
  """Hz -> mel on the 'slaney' or 'htk' scale (numpy, float64)."""
  hz = np.asarray(hz, np.float64)
  if scale == "htk":
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  if scale != "slaney":
    raise ValueError(f"mel scale '{scale}' is not 'slaney' or 'htk'")
  linear = hz / _SLANEY_F_SP
  logpart = (_SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
             + np.log(np.maximum(hz, 1e-10) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOG_STEP)
  return np.where(hz >= _SLANEY_MIN_LOG_HZ, logpart, linear)


def mel_to_hz(mel: np.ndarray, scale: str = "slaney") -> np.ndarray:
  """mel -> Hz, the inverse of `hz_to_mel`."""
  mel = np.asarray(mel, np.float64)
  if scale == "htk":
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  if scale != "slaney":
    raise ValueError(f"mel scale '{scale}' is not 'slaney' or 'htk'")
  min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
  return np.where(mel >= min_log_mel,
                  _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (mel - min_log_mel)),
                  mel * _SLANEY_F_SP)


def mel_filterbank(sample_rate: int = 16_000, n_fft: int = 400, n_mels: int = 80,
                   fmin: float = 0.0, fmax: float | None = None, scale: str = "slaney",
                   norm: bool = True) -> np.ndarray:
  """Returns the triangular mel filters, float32 (n_fft // 2 + 1, n_mels).

  Filter m rises from edge m to edge m + 1 and falls to edge m + 2, the n_mels + 2 edges
  evenly spaced in mel from fmin to fmax (default sample_rate / 2). A constant, built in
  numpy; multiply a power spectrogram (..., n_fft // 2 + 1) by it.
  """
  fmax = sample_rate / 2 if fmax is None else fmax
  freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin, scale), hz_to_mel(fmax, scale), n_mels + 2),
                    scale)
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  rising = (freqs[:, None] - lo) / (mid - lo)
  falling = (hi - freqs[:, None]) / (hi - mid)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  if norm:
    weights *= 2.0 / (hi - lo)
  return weights.astype(np.float32)


def log_mel_spectrogram(x: jnp.ndarray, sample_rate: int = 16_000, n_fft: int = 400,
                        hop: int = 160, n_mels: int = 80, fmin: float = 0.0,
                        fmax: float | None = None, scale: str = "slaney", norm: bool = True,
                        center: bool = True, eps: float = 1e-5) -> jnp.ndarray:
  """Log-mel spectrogram ln(max(|STFT|^2 @ filters, eps)).

  Args:
    x: float signal (..., S), e.g. waveforms in [-1, 1].
    sample_rate, n_fft, hop, center: see `stft`.
    n_mels, fmin, fmax, scale, norm: see `mel_filterbank`.
    eps: floor before the log (silence and padding give ln(eps)).

  Returns:
    float32 (..., frames, n_mels).
  """
  power = jnp.abs(stft(x, n_fft, hop, center)) ** 2
  filters = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, scale, norm))
  # HIGHEST: on TPU/GPU the default matmul precision (bf16 passes) would cost ~1e-2 in log.
  mel = jnp.matmul(power, filters, precision=jax.lax.Precision.HIGHEST)
  return jnp.log(jnp.maximum(mel, eps))


# --- inversion: log-mel -> linear power -> waveform (Griffin-Lim) ---------------------------

def istft(spec: jnp.ndarray, n_fft: int = 400, hop: int = 160, center: bool = True,
          length: int | None = None) -> jnp.ndarray:
  """Inverse of `stft` by windowed overlap-add (least squares for a consistent spectrogram).

  Args:
    spec: complex (..., frames, n_fft // 2 + 1), e.g. `stft(x)`.
    n_fft, hop, center: as in `stft`.
    length: samples to return (cropped or zero-padded); default hop * (frames - 1), the
      length whose centred STFT has `frames` frames again.

  Returns:
    float32 (..., length); istft(stft(x), length=len(x)) == x up to float error.
  """
  frames = spec.shape[-2]
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)   # hann_window, numpy
  chunks = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32) * window.astype(np.float32)
  total = n_fft + hop * (frames - 1)
  idx = (np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]).reshape(-1)
  out = jnp.zeros(chunks.shape[:-2] + (total,), jnp.float32).at[..., idx].add(
      chunks.reshape(chunks.shape[:-2] + (-1,)))
  # Sum of squared windows at each sample (a constant): dividing by it undoes the analysis
  # and synthesis windows. Near the ends (inside the centring pad) it falls to ~0; a floor
  # keeps those samples finite instead of amplifying inconsistent phase there.
  norm = np.zeros(total)
  np.add.at(norm, idx, np.tile(window ** 2, frames))
  out = out / np.maximum(norm, 1e-3 * norm.max()).astype(np.float32)
  if center:
    out = out[..., n_fft // 2:]
  length = hop * (frames - 1) if length is None else length
  if out.shape[-1] >= length:
    return out[..., :length]
  return jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])


def griffin_lim(magnitude: jnp.ndarray, n_fft: int = 400, hop: int = 160,
                length: int | None = None, n_iter: int = 32, momentum: float = 0.99,
                rng: jax.Array | None = None) -> jnp.ndarray:
  """A waveform whose STFT magnitude approaches `magnitude`: fast Griffin-Lim (Griffin & Lim
  1984; the momentum of Perraudin et al. 2013), centred Hann STFT as `stft`.

  Args:
    magnitude: float (..., frames, n_fft // 2 + 1), |STFT| (not power).
    n_fft, hop: as in `stft`.
    length: samples to return (default hop * (frames - 1)).
    n_iter: projections (each one istft + stft).
    momentum: 0 = plain Griffin-Lim; 0.99 converges much faster.
    rng: a key for random initial phases; None starts from zero phase.

  Returns:
    float32 (..., length). Phase is estimated, not known: a waveform from a magnitude alone
    differs from the original in phase, so waveform metrics such as SI-SNR against the
    original stay low even when the magnitude matches (spectral convergence is the fair
    measure of the inversion itself).
  """
  magnitude = jnp.asarray(magnitude, jnp.float32)
  frames = magnitude.shape[-2]
  inner = hop * (frames - 1)   # stft of this many samples has exactly `frames` frames
  if rng is None:
    angles = jnp.ones(magnitude.shape, jnp.complex64)
  else:
    angles = jnp.exp(2j * jnp.pi * jax.random.uniform(rng, magnitude.shape)).astype(
        jnp.complex64)
  beta = momentum / (1.0 + momentum)

  def step(_, carry):
    angles, previous = carry
    rebuilt = stft(istft(magnitude * angles, n_fft, hop, True, inner), n_fft, hop, True)
    accelerated = rebuilt - beta * previous
    return accelerated / (jnp.abs(accelerated) + 1e-8), rebuilt

  angles, _ = jax.lax.fori_loop(0, n_iter, step,
                                (angles, jnp.zeros(magnitude.shape, jnp.complex64)))
  return istft(magnitude * angles, n_fft, hop, True, inner if length is None else length)


def mel_to_linear_power(mel_power: jnp.ndarray, filters: np.ndarray,
                        n_iter: int = 30) -> jnp.ndarray:
  """Non-negative least squares inverse of the mel filterbank: (..., T, n_mels) mel power ->
  (..., T, F) linear power x >= 0 minimising |x @ filters - mel_power|^2.

  Starts from each frequency's filter-weighted mean of the mel bands' flat-spectrum levels
  (mel_m / sum_f filters[f, m]) and refines with multiplicative updates (Lee & Seung), which
  keep x non-negative. The filterbank has fewer bands than frequencies, so detail inside a
  band is not recoverable: the result is the smooth spectrum the bands imply.
  """
  f = jnp.asarray(filters, jnp.float32)                       # (F, M)
  mel_power = jnp.asarray(mel_power, jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  level = mel_power / jnp.maximum(jnp.sum(f, axis=0), 1e-12)  # (..., T, M) flat levels
  x = jnp.matmul(level, f.T, precision=hp) / jnp.maximum(jnp.sum(f, axis=1), 1e-12)
  gram = jnp.matmul(f, f.T, precision=hp)                     # (F, F)
  target = jnp.matmul(mel_power, f.T, precision=hp)           # (..., T, F)

  def step(_, x):
    return x * target / (jnp.matmul(x, gram, precision=hp) + 1e-12)

  return jax.lax.fori_loop(0, n_iter, step, x)


def mel_to_waveform(log_mel: jnp.ndarray, sample_rate: int = 16_000, n_fft: int = 400,
                    hop: int = 160, length: int | None = None, n_iter: int = 32,
                    rng: jax.Array | None = None, **filter_kw) -> jnp.ndarray:
  """Log-mel (..., T, n_mels) as `log_mel_spectrogram` makes it -> waveform (..., length):
  exp, `mel_to_linear_power`, square root, `griffin_lim`. `filter_kw`: fmin, fmax, scale,
  norm of the filterbank (must match the forward transform's)."""
  n_mels = log_mel.shape[-1]
  filters = mel_filterbank(sample_rate, n_fft, n_mels, **filter_kw)
  power = mel_to_linear_power(jnp.exp(jnp.asarray(log_mel, jnp.float32)), filters)
  return griffin_lim(jnp.sqrt(power), n_fft, hop, length, n_iter, rng=rng)


# --- 1-D convolution blocks for codecs and speech encoders ----------------------------------

def _conv_init(axes: tuple):
  # LeCun normal, untruncated (the truncated normal's inverse erf costs compile time).
  return nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, "fan_in", "uniform"), axes)


class Conv1D(nn.Module):
  """A convolution over time: (B, T, C) -> (B, ceil(T / stride), features), 'SAME' padding.
  Kernel (kernel, C, features) with the output channels on the logical axis `out_axis`."""
  features: int
  kernel: int = 3
  stride: int = 1
  out_axis: str | None = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(self.features, (self.kernel,), strides=(self.stride,), padding="SAME",
                   kernel_init=_conv_init((None, None, self.out_axis)),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                          (self.out_axis,)))(x)


class ResBlock1D(nn.Module):
  """x + conv(silu(norm(conv(silu(norm(x)))))), a 1x1 projection when channels change.

  The norm is RMSNorm per frame, never a statistic over time (no batch or group norm): a
  frame's output depends on its receptive field only, not on how much padding follows."""
  features: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = Conv1D(self.features, self.kernel)(nn.silu(RMSNorm()(x)))
    h = Conv1D(self.features, self.kernel)(nn.silu(RMSNorm()(h)))
    if x.shape[-1] != self.features:
      x = Conv1D(self.features, kernel=1)(x)
    return x + h


class ConvEncoder1D(nn.Module):
  """(B, T, C) -> (B, T / 2^S, out_dim), S = len(mults): an input conv, then per stage
  `res_blocks` residual blocks and a stride-2 conv (kernel 4) to width * mult channels
  (SoundStream / EnCodec's encoder shape, on frames instead of samples). T must divide by
  2^S."""
  width: int
  mults: tuple
  out_dim: int
  res_blocks: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Conv1D(self.width, kernel=7)(x)
    for mult in self.mults:
      for _ in range(self.res_blocks):
        x = ResBlock1D(self.width * mult)(x)
      x = Conv1D(self.width * mult, kernel=4, stride=2)(x)
    for _ in range(self.res_blocks):
      x = ResBlock1D(self.width * self.mults[-1])(x)
    return Conv1D(self.out_dim, kernel=1, out_axis=None)(nn.silu(RMSNorm()(x)))


class ConvDecoder1D(nn.Module):
  """(B, t, D) -> (B, t 2^S, out_dim): the encoder mirrored, each stage a nearest-neighbour
  2x upsampling in time, a conv and `res_blocks` residual blocks."""
  width: int
  mults: tuple
  out_dim: int
  res_blocks: int = 1

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = Conv1D(self.width * self.mults[-1], kernel=7)(z)
    for _ in range(self.res_blocks):
      x = ResBlock1D(self.width * self.mults[-1])(x)
    for mult in reversed(self.mults):
      x = jnp.repeat(x, 2, axis=-2)
      x = Conv1D(self.width * mult, kernel=3)(x)
      for _ in range(self.res_blocks):
        x = ResBlock1D(self.width * mult)(x)
    return Conv1D(self.out_dim, kernel=7, out_axis=None)(nn.silu(RMSNorm()(x)))


# --- log-mel batches for frame-rate models (codecs, speech encoders) ------------------------

LOG_FLOOR = float(np.log(1e-5))  # ln(eps) of log_mel_spectrogram: silence and padding
# A fixed normalisation of log-mel (natural log of power) to roughly zero mean and unit
# spread: measured on 16 default `speech` utterances, mean -7.9 and std 3.4 over all frames.
MEL_MEAN, MEL_SCALE = -8.0, 3.5


def normalise_log_mel(log_mel: jax.Array) -> jax.Array:
  return (log_mel - MEL_MEAN) / MEL_SCALE


def denormalise_log_mel(x: jax.Array) -> jax.Array:
  return x * MEL_SCALE + MEL_MEAN


@dataclasses.dataclass
class MelFrames:
  """A batch's log-mel padded to whole tokens, with its masks (see `mel_frames`)."""
  mel: jax.Array           # (B, T', M) log-mel, T' = t * frames_per_token, LOG_FLOOR-padded
  frame_mask: jax.Array    # (B, T') float 1 on valid frames
  token_mask: jax.Array    # (B, t) float 1 on tokens whose first frame is valid
  frames: int              # T, the input's frame count


def mel_frames(batch_or_mel: Any, mel_bins: int, frames_per_token: int,
               who: str = "this model") -> MelFrames:
  """A `speech` batch (its 'mel', 'mel_lengths' and row 'mask') or a log-mel array (B, T, M),
  all frames valid, -> `MelFrames` padded with LOG_FLOOR to a multiple of frames_per_token.

  Valid frames: t < mel_lengths on rows of mask 1. Raises ConfigError, naming the fix, for a
  batch without log-mel (a non-audio dataset, or config.data.mel_bins = 0) or of another
  number of mel bins. `who` names the model in the messages."""
  from tokenlab.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if isinstance(batch_or_mel, dict):
    if "mel" not in batch_or_mel:
      if "waveform" in batch_or_mel:
        raise ConfigError(f"{who} reads log-mel frames but the batches have none; set "
                          f"--config.data.mel_bins={mel_bins}")
      raise ConfigError(f"{who} trains on an audio dataset's log-mel frames (data 'speech' "
                        f"with config.data.mel_bins={mel_bins}); these batches hold "
                        f"{sorted(batch_or_mel)}")
    mel = batch_or_mel["mel"]
    b, t = mel.shape[:2]
    lengths = batch_or_mel.get("mel_lengths", jnp.full((b,), t, jnp.int32))
    rows = batch_or_mel.get("mask", jnp.ones((b,), jnp.float32))
    valid = (jnp.arange(t)[None, :] < lengths[:, None]) & (rows[:, None] > 0)
  else:
    mel = batch_or_mel
    valid = jnp.ones(mel.shape[:2], bool)
  if mel.ndim != 3 or mel.shape[-1] != mel_bins:
    raise ConfigError(f"{who}(mel_bins={mel_bins}) got log-mel of shape {tuple(mel.shape)}; "
                      f"set config.model.mel_bins to the data's config.data.mel_bins")
  frames = mel.shape[1]
  pad = -frames % frames_per_token
  mel = jnp.pad(mel, ((0, 0), (0, pad), (0, 0)), constant_values=LOG_FLOOR)
  valid = jnp.pad(valid, ((0, 0), (0, pad)))
  return MelFrames(mel, valid.astype(jnp.float32),
                   valid[:, ::frames_per_token].astype(jnp.float32), frames)
