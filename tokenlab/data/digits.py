"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

Images are scaled to [0, 1] (the originals are 0..16) and, when `size` > 8, upsampled with
bilinear interpolation (pixel centres aligned), so values stay in [0, 1]. The validation split
is a fixed `validation_percent` of the images chosen by a permutation drawn from `seed`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a size below 8 or a validation_percent outside 1..50."""
  if options["size"] < 8:
    raise ConfigError(f"digits option size={options['size']} must be >= 8 (the source is "
                      "8x8); set data.options.size to 8, 16, 32, ...")
  if not 1 <= options["validation_percent"] <= 50:
    raise ConfigError("digits option validation_percent must be in 1..50")


def _interp_matrix(size: int, src: int = 8) -> np.ndarray:
  """Returns the (size, src) bilinear interpolation matrix with aligned pixel centres."""
  centres = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
  lo = np.floor(centres).astype(int)
  hi = np.minimum(lo + 1, src - 1)
  frac = centres - lo
  mat = np.zeros((size, src))
  mat[np.arange(size), lo] += 1 - frac
  mat[np.arange(size), hi] += frac
  return mat


def images(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images float32 (1797, size, size, 1) in [0, 1], labels int64 (1797,))."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  x = data.images.astype(np.float64) / 16.0
  if size != 8:
    mat = _interp_matrix(size)
    x = np.einsum("ia,nab,jb->nij", mat, x, mat)
  return np.clip(x, 0, 1).astype(np.float32)[..., None], data.target.astype(np.int64)


def split_indices(split: str, options: Mapping[str, Any], num: int = 1797) -> np.ndarray:
  """Returns the sorted image indices of `split`."""
  perm = np.random.default_rng(options["seed"]).permutation(num)
  n_val = round(num * options["validation_percent"] / 100)
  return np.sort(perm[:n_val] if split == "validation" else perm[n_val:])


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_digits`: records {'index', 'image', 'label'}."""
  name = "tokenlab_digits"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    size = options["size"]
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.float32),
        "label": tfds.features.ClassLabel(num_classes=10),
    })

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    check_options(options)
    x, y = images(options["size"])
    for i in split_indices(split, options, len(x)):
      yield int(i), {"index": int(i), "image": x[i], "label": int(y[i])}


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns the split sizes for `tokenlab data build`."""
  return {f"{s}_images": len(split_indices(s, options)) for s in storage.SPLITS}


def image_shape(options: Mapping[str, Any]) -> tuple[int, int, int]:
  """Returns (height, width, channels) of one image."""
  return (options["size"], options["size"], 1)
