"""Base of in-code synthetic data streams (the tasks of fourier_head, caft, lexinvariant,
charbench): batch n is a pure function of (seed, n), so the checkpointable iterator state is
just the step count. Such streams feed `tokenlab train` through config.data.name = "method".
"""

from __future__ import annotations

import json

import numpy as np


class StepIterator:
  """Subclasses set `self.step = 0` and implement `__next__` from (seed, self.step)."""

  step: int = 0

  def __iter__(self) -> "StepIterator":
    return self

  def get_state(self) -> bytes:
    return json.dumps({"step": self.step}).encode()

  def set_state(self, state: bytes) -> None:
    self.step = json.loads(state)["step"]

  def start_prefetch(self) -> None:
    """grain's checkpoint handler calls this after a restore; nothing to prefetch here."""


class SplitStreamIterator(StepIterator):
  """A StepIterator of generated rows with a train and a validation stream.

  split 'train' draws batch `step` from (data_seed, 0, seed, step); 'validation' from
  (data_seed, 1, step), a stream disjoint from training and the same for every seed.
  `num_batches` ends the iterator (None: endless). Subclasses call `next_rng()` in __next__.
  """

  def __init__(self, batch_size: int, seed: int, *, split: str = "train", data_seed: int = 0,
               num_batches: int | None = None):
    self.batch_size, self.seed = batch_size, seed
    self.split, self.data_seed, self.num_batches = split, data_seed, num_batches
    self.step = 0

  def next_rng(self) -> np.random.Generator:
    """The generator of the next batch (StopIteration after num_batches); advances step."""
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    key = ((self.data_seed, 0, self.seed, self.step) if self.split == "train"
           else (self.data_seed, 1, self.step))
    self.step += 1
    return np.random.default_rng(key)



class ArrayIterator(StepIterator):
  """Checkpointable batches of in-memory arrays (e.g. codes a frozen tokenizer encoded once).

  train: random rows drawn with (seed, step), endless; eval: the split in order, the last
  batch padded with 'mask' 0. `extra` (train only): fn(rng, rows) -> more batch entries.
  Batches: {name: array[rows] for each array, 'mask' float32 (B,)}.
  """

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, train: bool,
               extra=None):
    self.arrays, self.batch_size, self.seed, self.train = arrays, batch_size, seed, train
    self.extra = extra
    self.n = len(next(iter(arrays.values())))
    self.step = 0

  def __next__(self) -> dict[str, np.ndarray]:
    b = self.batch_size
    if self.train:
      rng = np.random.default_rng((self.seed, 7, self.step))
      rows = rng.integers(0, self.n, b)
      mask = np.ones(b, np.float32)
    else:
      if self.step * b >= self.n:
        raise StopIteration
      rows = np.arange(self.step * b, (self.step + 1) * b)
      mask = (rows < self.n).astype(np.float32)
      rows = np.minimum(rows, self.n - 1)
      rng = None
    self.step += 1
    out = {k: v[rows] for k, v in self.arrays.items()}
    if self.extra is not None and rng is not None:
      out.update(self.extra(rng, rows))
    out["mask"] = mask
    return out
