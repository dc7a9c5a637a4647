"""What the procedural video datasets (moving_digits, moving_shapes, pulse) share.

- Records are pure functions of (seed, split, index): `draw` seeds a generator with
  [seed, split stream, index, attempt] and retries until the clip's labels fall on the
  split's side of a hash (`in_split`), so validation never repeats a train clip whatever the
  split sizes, and a larger num_train only appends records.
- `check_options` gives the options every video dataset has the same ConfigError messages.
- `Builder`: the tfds builder base ({'index', 'video', labels} per clip).

Records hold 'video' uint8 (T, H, W, C); batches carry it as float32 in [0, 1] (pipeline.py).
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError

SPLIT_STREAM = {"train": 0, "validation": 1}
VALIDATION_SHARE = 8  # A clip is validation-side when its hash's first byte % 8 == 0.
_MAX_ATTEMPTS = 10_000


def check_options(name: str, options: Mapping[str, Any], min_size: int, max_frames: int = 64,
                  size_multiple: int = 1) -> None:
  """Raises ConfigError (one line naming the fix) for a bad size, num_frames or split size."""
  size = options["size"]
  if size % size_multiple or not min_size <= size <= 256:
    multiple = f"a multiple of {size_multiple} " if size_multiple > 1 else ""
    raise ConfigError(f"{name} option size={size} must be {multiple}in {min_size}..256; "
                      f"e.g. data.options.size={max(min_size, 32)}")
  if not 2 <= options["num_frames"] <= max_frames:
    raise ConfigError(f"{name} option num_frames={options['num_frames']} must be in "
                      f"2..{max_frames}; e.g. data.options.num_frames=16")
  for key in ("num_train", "num_validation"):
    if options[key] < 1:
      raise ConfigError(f"{name} option {key}={options[key]} must be >= 1")


def in_split(key: bytes, split: str) -> bool:
  """Whether a clip whose labels serialise to `key` belongs to `split` (1 in 8: validation)."""
  held_out = hashlib.sha256(key).digest()[0] % VALIDATION_SHARE == 0
  return held_out == (split == "validation")


def draw(seed: int, split: str, index: int, sample: Callable[[np.random.Generator], Any],
         key: Callable[[Any], bytes]) -> Any:
  """Returns the labels of clip `index` of `split`: the first `sample(rng)` on its split's side.

  Args:
    seed: the dataset's seed option.
    split: 'train' or 'validation'.
    index: the record's index in its split.
    sample: rng -> labels of one clip (may itself retry until the clip is valid).
    key: labels -> bytes that determine the clip's pixels (what must not repeat).
  """
  for attempt in range(_MAX_ATTEMPTS):
    labels = sample(np.random.default_rng([seed, SPLIT_STREAM[split], index, attempt]))
    if in_split(key(labels), split):
      return labels
  raise RuntimeError(f"no {split} clip in {_MAX_ATTEMPTS} draws (seed {seed}, index {index})")


class Builder(storage.OptionsBuilder, skip_registration=True):
  """Base of the video builders: records {'index', 'video' uint8 (T, H, W, C), labels}.

  The subclass's module defines `check_options(options)` and `video_shape(options)`; the
  subclass defines `label_features(options)` (tfds features of the labels) and
  `clip(split, index, options)` (the record without its index: 'video' and the labels).
  """

  def label_features(self, options: Mapping[str, Any]) -> dict[str, Any]:
    raise NotImplementedError

  def clip(self, split: str, index: int, options: Mapping[str, Any]) -> dict[str, Any]:
    raise NotImplementedError

  def _module(self) -> types.ModuleType:
    return sys.modules[type(self).__module__]

  def features(self, options):
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "video": tfds.features.Tensor(shape=self._module().video_shape(options),
                                      dtype=np.uint8),
        **self.label_features(options)})

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    self._module().check_options(options)
    for i in range(options[f"num_{split}"]):
      yield i, {"index": i, **self.clip(split, i, options)}
