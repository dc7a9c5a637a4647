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

