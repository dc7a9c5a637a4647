"""`photos`: random square crops of the photographs that ship inside the scikit-image wheel.

Source: the image files in the installed `skimage/data/` folder (the files behind
`skimage.data.astronaut()`, `.coffee()`, ...), read directly with Pillow, so nothing is ever
downloaded (scikit-image fetches its other images with pooch; those are not used). scikit-image
is BSD 3-Clause; per its docstrings every photo used here is public domain, CC0 or "no known
copyright restrictions" (NASA, SpaceX, CC0Textures and the photographers named there).

Photos used (`PHOTOS`), RGB: astronaut, chelsea, coffee, hubble_deep_field,
immunohistochemistry, motorcycle_left, retina, rocket. Grayscale, repeated over 3 channels
(left out with `grayscale=False`): brick, camera, cell, clock, coins, grass, gravel, moon.
Excluded: motorcycle_right (the stereo twin of motorcycle_left, so held-out photos stay
unseen), synthetic or graphic images (chessboard, color wheel, horse silhouette, logo,
phantom), scanned text (page, text), and images smaller than 128 pixels (microaneurysms, the
25x25 lfw faces, multipage tifs).

Each photo is first box-downsampled by `downscale` (1..4; default 2, so a 32-pixel crop
covers 64 original pixels). Crop i of a split comes from photo i mod (photos in the split) at a
uniformly random position drawn from (seed, split, i); so every photo gets the same number of
crops, and a larger num_train only appends crops. 'validation' takes its crops only from the
held-out photos named in `validation_photos` (default chelsea, rocket, gravel, coins), so
reconstruction is measured on unseen images.

Records: {'index' int64, 'image' uint8 (size, size, 3), 'label' photo id (index in PHOTOS),
'top', 'left' int64 (crop corner in the downscaled photo)}.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError, TokenlabError

# name -> (file in skimage/data, is RGB)
_FILES = {
    "astronaut": ("astronaut.png", True), "chelsea": ("chelsea.png", True),
    "coffee": ("coffee.png", True), "hubble_deep_field": ("hubble_deep_field.jpg", True),
    "immunohistochemistry": ("ihc.png", True), "motorcycle_left": ("motorcycle_left.png", True),
    "retina": ("retina.jpg", True), "rocket": ("rocket.jpg", True),
    "brick": ("brick.png", False), "camera": ("camera.png", False),
    "cell": ("cell.png", False), "clock": ("clock_motion.png", False),
    "coins": ("coins.png", False), "grass": ("grass.png", False),
    "gravel": ("gravel.png", False), "moon": ("moon.png", False),
}
PHOTOS = tuple(_FILES)
RGB_PHOTOS = tuple(n for n, (_, rgb) in _FILES.items() if rgb)
_SPLIT_STREAM = {"train": 0, "validation": 1}


def _validation_names(options: Mapping[str, Any]) -> list[str]:
  return [n.strip() for n in options["validation_photos"].split(",") if n.strip()]


def split_photos(split: str, options: Mapping[str, Any]) -> list[str]:
  """Returns the photo names whose crops make up `split`, in PHOTOS order."""
  held_out = set(_validation_names(options))
  used = [n for n in PHOTOS if options["grayscale"] or n in RGB_PHOTOS]
  return [n for n in used if (n in held_out) == (split == "validation")]


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a size other than 32/64, an unknown or empty photo split, ..."""
  if options["size"] not in (32, 64):
    raise ConfigError(f"photos option size={options['size']} must be 32 or 64")
  if not 1 <= options["downscale"] <= 4:
    raise ConfigError(f"photos option downscale={options['downscale']} must be in 1..4")
  for key in ("num_train", "num_validation"):
    if options[key] < 1:
      raise ConfigError(f"photos option {key} must be >= 1")
  names = _validation_names(options)
  unknown = [n for n in names if n not in _FILES]
  if unknown:
    raise ConfigError(f"photos option validation_photos names unknown photos {unknown}; "
                      f"choose from: {', '.join(PHOTOS)}")
  for split in storage.SPLITS:
    if not split_photos(split, options):
      raise ConfigError(f"photos options leave no photo for the {split} split; change "
                        "data.options.validation_photos (comma-separated names) or grayscale")


def _skimage_data_dir() -> str:
  spec = importlib.util.find_spec("skimage")
  if spec is None or not spec.submodule_search_locations:
    raise TokenlabError("dataset 'photos' reads the photographs of the scikit-image package, "
                        "which is not installed; run `pip install -e .`")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=None)
def photo(name: str, downscale: int = 1) -> np.ndarray:
  """Returns photo `name` as uint8 (H // downscale, W // downscale, 3), box-downsampled."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(_skimage_data_dir(), _FILES[name][0])
  if not os.path.exists(path):
    raise TokenlabError(f"{path} is missing from the installed scikit-image; reinstall it")
  with Image.open(path) as im:
    x = np.asarray(im.convert("RGB"), np.float64)
  h, w = (x.shape[0] // downscale) * downscale, (x.shape[1] // downscale) * downscale
  x = x[:h, :w].reshape(h // downscale, downscale, w // downscale, downscale, 3).mean((1, 3))
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def crop_plan(split: str, options: Mapping[str, Any]) -> list[tuple[str, int, int]]:
  """Returns (photo name, top, left) of every crop of `split`."""
  names = split_photos(split, options)
  size, stream = options["size"], _SPLIT_STREAM[split]
  num = options["num_train" if split == "train" else "num_validation"]
  plan = []
  for i in range(num):
    name = names[i % len(names)]
    h, w = photo(name, options["downscale"]).shape[:2]
    if min(h, w) < size:
      raise ConfigError(f"photo {name} is {h}x{w} after downscale={options['downscale']}, "
                        f"smaller than size={size}; lower data.options.downscale")
    rng = np.random.default_rng([options["seed"], stream, i])
    plan.append((name, int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))))
  return plan


def image_shape(options: Mapping[str, Any]) -> tuple[int, int, int]:
  """Returns (height, width, channels) of one image."""
  return (options["size"], options["size"], 3)


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_photos`: records {'index', 'image', 'label', 'top', 'left'}."""
  name = "tokenlab_photos"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "image": tfds.features.Tensor(shape=image_shape(options), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(PHOTOS)),
        "top": np.int64,
        "left": np.int64,
    })

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    check_options(options)
    size = options["size"]
    for i, (name, top, left) in enumerate(crop_plan(split, options)):
      image = photo(name, options["downscale"])[top:top + size, left:left + size]
      yield i, {"index": i, "image": image, "label": PHOTOS.index(name), "top": top,
                "left": left}


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns split sizes and the photos of each split."""
  out: dict[str, Any] = {}
  for split in storage.SPLITS:
    out[f"{split}_crops"] = options["num_train" if split == "train" else "num_validation"]
    out[f"{split}_photos"] = ",".join(split_photos(split, options))
  return out
