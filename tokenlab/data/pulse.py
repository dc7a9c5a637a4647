"""`pulse`: a blob whose radius follows a synthetic ECG-like signal (the ECHOPulse toy).

Each clip is `num_frames` grayscale frames (size x size, default 32x32) of one disc-shaped
blob, centred, with an anti-aliased edge (pixel value 255 * clip(r - d + 1/2, 0, 1) at
distance d from the centre, so the blob's mass is pi r^2 to within a fraction of a pixel).
Its radius in frame k is

  radius[k] = size * (RADIUS_BASE + RADIUS_GAIN * signal[k]),

where signal[k] is the clip's ECG-like waveform averaged over frame k's exposure interval
[k, k + 1) / fps (16 sub-samples; a frame integrates light over its interval, and the average
keeps the narrow QRS complex from aliasing). The waveform is periodic, one beat per
60 / heart_rate seconds, and each beat is a sum of five Gaussians in the beat's phase, the P,
Q, R, S and T waves (`WAVES`, a simplification of McSharry et al.'s ECGSYN, IEEE TBME 2003),
scaled by `amplitude`. Per clip: heart_rate uniform in 50..120 bpm, amplitude in 0.6..1.2,
the phase of frame 0 uniform in [0, 1). `signal` is the condition: a model that generates the
clip from it can be scored by `radius_from_pixels` (blob size read back from the frames).

Clip i of a split is a pure function of (seed, split, i) (video.draw); validation never
repeats a train clip (a hash of the clip's parameters decides its split). Procedural, no
source data.

Records: {'index' int64, 'video' uint8 (T, size, size, 1), 'signal' float32 (T,), 'radius'
float32 (T,) pixels, 'heart_rate' float32 bpm, 'amplitude' float32, 'phase' float32}.
Batches: video float32 (B, T, size, size, 1) in [0, 1], mask, and signal, radius (B, T),
heart_rate, amplitude (B,), float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import video
from tokenlab.errors import ConfigError

# (phase of the peak in the beat, width in beat fractions, height): P, Q, R, S, T. The QRS
# complex is wider than a real one (R: 0.025 of a beat, about 20 ms at 70 bpm in an ECG), so
# that averaged over a 1/12 s frame the R peak still stands above the T wave.
WAVES = np.array([[0.15, 0.030, 0.12], [0.35, 0.015, -0.12], [0.40, 0.025, 1.0],
                  [0.45, 0.015, -0.25], [0.65, 0.050, 0.30]])
HEART_RATE = (50.0, 120.0)   # bpm
AMPLITUDE = (0.6, 1.2)
RADIUS_BASE, RADIUS_GAIN = 0.25, 0.22  # radius / size at signal 0, per unit of signal
_SUBSAMPLES = 16


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a size outside 16..256, num_frames outside 2..256, fps outside
  4..16 (shorter frames average less of the R peak away and the blob would outgrow the
  frame), or an empty split."""
  video.check_options("pulse", options, min_size=16, max_frames=256)
  if not 4.0 <= options["fps"] <= 16.0:
    raise ConfigError(f"pulse option fps={options['fps']} must be in 4..16 (frames per second "
                      "of the clip); e.g. data.options.fps=12.0")


def ecg(phase: np.ndarray) -> np.ndarray:
  """The unit-amplitude ECG-like beat at `phase` (any shape, in beats; period 1)."""
  d = (np.asarray(phase, np.float64)[..., None] - WAVES[:, 0] + 0.5) % 1.0 - 0.5
  return (WAVES[:, 2] * np.exp(-d ** 2 / (2 * WAVES[:, 1] ** 2))).sum(-1)


def frame_signal(heart_rate: float, amplitude: float, phase: float, num_frames: int,
                 fps: float) -> np.ndarray:
  """Returns float32 (num_frames,): amplitude * ecg averaged over each frame's interval."""
  times = (np.arange(num_frames)[:, None] + (np.arange(_SUBSAMPLES) + 0.5) / _SUBSAMPLES) / fps
  return (amplitude * ecg(phase + times * heart_rate / 60.0).mean(-1)).astype(np.float32)


def render(radius: np.ndarray, size: int) -> np.ndarray:
  """radius (T,) pixels -> video uint8 (T, size, size, 1): a centred anti-aliased disc."""
  c = (np.arange(size) + 0.5) - size / 2
  dist = np.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
  cover = np.clip(np.asarray(radius, np.float64)[:, None, None] - dist + 0.5, 0.0, 1.0)
  return np.round(cover * 255).astype(np.uint8)[..., None]


def radius_from_pixels(clip: np.ndarray) -> np.ndarray:
  """Reads the blob's radius back: (T, H, W, C) uint8 or float in [0, 1] -> (T,) pixels,
  sqrt(mass / pi), mass = the frame's summed intensity (channel mean)."""
  x = np.asarray(clip, np.float64)
  if np.issubdtype(np.asarray(clip).dtype, np.integer):
    x = x / 255.0
  return np.sqrt(x.mean(-1).sum((1, 2)) / np.pi)


def clip_labels(split: str, index: int, options: Mapping[str, Any]) -> dict[str, Any]:
  """Returns clip `index` of `split`: signal, radius (T,), heart_rate, amplitude, phase."""

  def sample(rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.uniform(*HEART_RATE), rng.uniform(*AMPLITUDE), rng.random()],
                    np.float32)

  hr, amp, phase = (float(v) for v in video.draw(options["seed"], split, index, sample,
                                                   lambda p: p.tobytes()))
  signal = frame_signal(hr, amp, phase, options["num_frames"], options["fps"])
  radius = (options["size"] * (RADIUS_BASE + RADIUS_GAIN * signal)).astype(np.float32)
  return {"signal": signal, "radius": radius, "heart_rate": np.float32(hr),
          "amplitude": np.float32(amp), "phase": np.float32(phase)}


def video_shape(options: Mapping[str, Any]) -> tuple[int, int, int, int]:
  """Returns (T, height, width, channels) of one clip."""
  return (options["num_frames"], options["size"], options["size"], 1)


def label_fields(options: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Returns the batch's label fields: name -> (per-clip shape, dtype)."""
  t = options["num_frames"]
  return {"signal": ((t,), np.float32), "radius": ((t,), np.float32),
          "heart_rate": ((), np.float32), "amplitude": ((), np.float32)}


class Builder(video.Builder):
  """tfds builder `tokenlab_pulse`: {'index', 'video', 'signal', 'radius', 'heart_rate',
  'amplitude', 'phase'}."""
  name = "tokenlab_pulse"
  VERSION = tfds.core.Version("1.0.0")

  def label_features(self, options):
    t = options["num_frames"]
    return {"signal": tfds.features.Tensor(shape=(t,), dtype=np.float32),
            "radius": tfds.features.Tensor(shape=(t,), dtype=np.float32),
            "heart_rate": np.float32, "amplitude": np.float32, "phase": np.float32}

  def clip(self, split, index, options):
    labels = clip_labels(split, index, options)
    return {"video": render(labels["radius"], options["size"]), **labels}


def describe(record: Mapping[str, Any]) -> str:
  """One line of a record's labels for `tokenlab data show`."""
  signal = " ".join(f"{v:.2f}" for v in np.asarray(record["signal"]))
  return (f"heart rate {float(record['heart_rate']):.1f} bpm, amplitude "
          f"{float(record['amplitude']):.2f}; signal per frame: {signal}")


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns split sizes and the range of the blob radius over (up to 500) train clips."""
  radii = np.concatenate([clip_labels("train", i, options)["radius"]
                          for i in range(min(options["num_train"], 500))])
  return {"train_clips": options["num_train"], "validation_clips": options["num_validation"],
          "train_radius_min": float(radii.min()), "train_radius_max": float(radii.max())}
