"""Base of in-code synthetic data streams (the tasks of fourier_head, caft, lexinvariant,
charbench): batch n is a pure function of (seed, n), so the checkpointable iterator state is
just the step count. Such streams feed `tokenlab train` through config.data.name = "method".
"""

from __future__ import annotations

import json


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
