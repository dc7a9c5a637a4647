"""`shapes`: procedural coloured shapes on black, any number on demand, labels scored exactly.

Each image (default 32x32 RGB) holds `count` objects (1..max_count) of ONE shape class and ONE
colour, drawn from a fixed s x s template (s = size // 4) with its top-left corner at an
integer position. Objects never touch (at least one background pixel between bounding boxes),
so each one is a connected component and `attributes(image)` reads every label back from the
pixels: shape class, colour, count and positions. Rendering is a pure function of the labels
(`render`), and the labels of record i of a split are a pure function of (seed, split, i), so
a dataset of any size is deterministic and a larger num_train only appends records.
Validation records never repeat the labels (hence the pixels) of a train record.

Shapes (label):  0 square, 1 circle, 2 triangle (pointing up), 3 plus.
Colours:         0 red, 1 green, 2 blue, 3 yellow, 4 magenta, 5 cyan (channels 0 or 255).

Records: {'index' int64, 'image' uint8 (size, size, 3), 'label' shape class, 'colour',
'count' int64, 'positions' int64 (max_count, 2): (row, col) top-left corners sorted
row-major, rows past `count` are -1}. Batches carry image, label, mask and also colour, count
and positions (int32). Generated samples are scored with `attributes` or `matches`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError

SHAPES = ("square", "circle", "triangle", "plus")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                    [0, 255, 255]], np.uint8)
_SPLIT_STREAM = {"train": 0, "validation": 1}
_MAX_TRIES = 1000  # Placement attempts per image before starting again with new positions.


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a size that is not a multiple of 8 in 24..256, bad counts."""
  size = options["size"]
  if size % 8 or not 24 <= size <= 256:
    raise ConfigError(f"shapes option size={size} must be a multiple of 8 in 24..256 "
                      "(objects are size // 4 pixels wide); e.g. data.options.size=32")
  if not 1 <= options["max_count"] <= 4:
    raise ConfigError(f"shapes option max_count={options['max_count']} must be in 1..4")
  for key in ("num_train", "num_validation"):
    if options[key] < 1:
      raise ConfigError(f"shapes option {key} must be >= 1")


def object_size(size: int) -> int:
  """Returns the side s of every object's bounding box in a size x size image."""
  return size // 4


@functools.lru_cache(maxsize=None)
def templates(s: int) -> np.ndarray:
  """Returns bool (len(SHAPES), s, s): each shape's pixels; every one touches all 4 sides."""
  c = (np.arange(s) + 0.5) - s / 2  # Pixel-centre offsets from the box centre.
  y, x = c[:, None], c[None, :]
  row = np.arange(s)[:, None]
  square = np.ones((s, s), bool)
  circle = y ** 2 + x ** 2 <= (s / 2) ** 2
  triangle = np.abs(x) <= (row + 1) / 2  # Widens by one pixel per row, full at the bottom.
  plus = (np.abs(x) <= s / 6) | (np.abs(y) <= s / 6)
  return np.stack([square, circle, triangle, plus])


def render(size: int, shape: int, colour: int, positions: np.ndarray) -> np.ndarray:
  """Draws objects of `shape` and `colour` with top-left corners `positions` (n, 2) (rows
  of -1 are skipped); returns the image uint8 (size, size, 3)."""
  s = object_size(size)
  mask = np.zeros((size, size), bool)
  for r, c in np.asarray(positions).reshape(-1, 2):
    if r >= 0:
      mask[r:r + s, c:c + s] |= templates(s)[shape]
  return np.where(mask[..., None], PALETTE[colour], 0).astype(np.uint8)


def sample_labels(rng: np.random.Generator, size: int, max_count: int) -> dict[str, Any]:
  """Draws one image's labels: shape, colour, count, positions int64 (max_count, 2)."""
  s = object_size(size)
  shape, colour = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS)))
  count = int(rng.integers(1, max_count + 1))
  while True:
    placed: list[tuple[int, int]] = []
    for _ in range(_MAX_TRIES):
      r, c = (int(v) for v in rng.integers(0, size - s + 1, size=2))
      # Boxes keep at least one background pixel between them (gap >= 1 both ways).
      if all(abs(r - r2) > s or abs(c - c2) > s for r2, c2 in placed):
        placed.append((r, c))
        if len(placed) == count:
          break
    if len(placed) == count:
      break
  positions = np.full((max_count, 2), -1, np.int64)
  positions[:count] = sorted(placed)
  return {"label": shape, "colour": colour, "count": count, "positions": positions}


def _labels_key(labels: Mapping[str, Any]) -> tuple:
  return (labels["label"], labels["colour"], tuple(labels["positions"].ravel().tolist()))


def split_labels(split: str, options: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Returns the labels of every record of `split` (validation: none equal to a train one)."""
  size, max_count, seed = options["size"], options["max_count"], options["seed"]

  def draw(stream: int, i: int) -> dict[str, Any]:
    return sample_labels(np.random.default_rng([seed, stream, i]), size, max_count)

  train = [draw(0, i) for i in range(options["num_train"])]
  if split == "train":
    return train
  seen = {_labels_key(t) for t in train}
  out, j = [], 0
  while len(out) < options["num_validation"]:
    labels = draw(1, j)
    j += 1
    if _labels_key(labels) not in seen:
      seen.add(_labels_key(labels))
      out.append(labels)
  return out


def attributes(image: np.ndarray) -> dict[str, Any]:
  """Reads the labels back from an image's pixels.

  Args:
    image: (size, size, 3), uint8 in 0..255 or float in [0, 1] (e.g. a generated sample).

  Returns:
    {'count': objects found, 'positions': int64 (count, 2) top-left corners sorted row-major,
     'shapes' / 'colours': int64 (count,) per object (shape = template of best IoU, colour =
     palette entry nearest the object's mean colour), 'shape' / 'colour': the value shared by
     all objects, or -1 when they differ or there is none}. Foreground is any pixel whose
     brightest channel is above half; objects are 4-connected components of it.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  x = np.asarray(image, np.float32)
  if np.issubdtype(np.asarray(image).dtype, np.integer):
    x = x / 255.0
  size = x.shape[0]
  s = object_size(size)
  fg = x.max(-1) > 0.5
  comp, n = ndimage.label(fg)
  objs = []
  for k, box in enumerate(ndimage.find_objects(comp), start=1):
    mask = comp == k
    r, c = box[0].start, box[1].start
    window = np.zeros((s, s), bool)
    crop = mask[r:r + s, c:c + s]
    window[:crop.shape[0], :crop.shape[1]] = crop
    outside = mask.sum() - crop.sum()
    tpl = templates(s)
    inter = (tpl & window).sum((1, 2))
    union = (tpl | window).sum((1, 2)) + outside
    mean = x[mask].mean(0) * 255.0
    colour = int(np.argmin(((PALETTE.astype(np.float32) - mean) ** 2).sum(-1)))
    objs.append((r, c, int(np.argmax(inter / union)), colour))
  objs.sort()
  shapes = np.array([o[2] for o in objs], np.int64)
  colours = np.array([o[3] for o in objs], np.int64)
  return {"count": n,
          "positions": np.array([o[:2] for o in objs], np.int64).reshape(-1, 2),
          "shapes": shapes, "colours": colours,
          "shape": int(shapes[0]) if n and (shapes == shapes[0]).all() else -1,
          "colour": int(colours[0]) if n and (colours == colours[0]).all() else -1}


def matches(image: np.ndarray, shape: int, colour: int, count: int,
            positions: np.ndarray | None = None) -> dict[str, bool]:
  """Scores one image against wanted labels: {'shape', 'colour', 'count'[, 'positions'],
  'all'} each True when read back exactly (`positions` (>= count, 2), -1 rows ignored)."""
  got = attributes(image)
  out = {"shape": got["shape"] == shape, "colour": got["colour"] == colour,
         "count": got["count"] == count}
  if positions is not None:
    want = np.asarray(positions).reshape(-1, 2)
    want = want[want[:, 0] >= 0]
    out["positions"] = bool(got["positions"].shape == want.shape
                            and (got["positions"] == want).all())
  out["all"] = all(out.values())
  return out


def image_shape(options: Mapping[str, Any]) -> tuple[int, int, int]:
  """Returns (height, width, channels) of one image."""
  return (options["size"], options["size"], 3)


def batch_fields(options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Returns the extra int32 batch fields and their per-example shapes."""
  return {"colour": (), "count": (), "positions": (options["max_count"], 2)}


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_shapes`: {'index', 'image', 'label', 'colour', 'count', 'positions'}."""
  name = "tokenlab_shapes"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "image": tfds.features.Tensor(shape=image_shape(options), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(SHAPES)),
        "colour": tfds.features.ClassLabel(names=list(COLOURS)),
        "count": np.int64,
        "positions": tfds.features.Tensor(shape=(options["max_count"], 2), dtype=np.int64),
    })

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    check_options(options)
    for i, labels in enumerate(split_labels(split, options)):
      image = render(options["size"], labels["label"], labels["colour"], labels["positions"])
      yield i, {"index": i, "image": image, **labels}


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns split sizes and the share of each object count in train."""
  out: dict[str, float] = {"train_images": options["num_train"],
                           "validation_images": options["num_validation"]}
  counts = np.bincount([t["count"] for t in split_labels("train", options)],
                       minlength=options["max_count"] + 1)
  for k in range(1, options["max_count"] + 1):
    out[f"train_share_count_{k}"] = float(counts[k] / options["num_train"])
  return out


def names(labels: Sequence[int], kind: str = "shape") -> list[str]:
  """Returns the names of shape (kind='shape') or colour (kind='colour') ids."""
  table = SHAPES if kind == "shape" else COLOURS
  return [table[int(i)] for i in labels]
