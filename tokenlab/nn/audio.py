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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
