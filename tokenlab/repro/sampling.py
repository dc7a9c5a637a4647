"""Pieces shared by the image-generation reproductions (tokenbridge, xar, ar_vision, clear).

- `timed_sampler`: a jitted sampler compiled for its arguments first, then timed (compile
  excluded; the best of `runs` calls, since other work shares these CPUs).
- `per_class_samples` / `save_per_class_grid`: one sample per class from every arm with one
  real image per class on top: the samples.png of each reproduction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def timed_sampler(fn: Callable[..., Any], *args: Any, runs: int = 1) -> tuple[np.ndarray, float]:
  """(fn(*args) as numpy, best wall seconds over `runs` calls of the compiled program)."""
  import jax
  compiled = jax.jit(fn).lower(*args).compile()
  best, out = math.inf, None
  for _ in range(runs):
    t = time.perf_counter()
    out = np.asarray(jax.block_until_ready(compiled(*args)))
    best = min(best, time.perf_counter() - t)
  return out, best


def per_class_samples(samples: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
                      classes: int = 10) -> dict[str, Any]:
  """{"samples": {arm: (classes, H, W, C)}, "real": (classes, H, W, C)}.

  Each arm's samples (n, H, W, C) were drawn for labels repeat(arange(classes), n // classes):
  every (n // classes)-th sample is then one per class. "real": the first real image of each
  class from `images`/`labels`.
  """
  out = {}
  for arm, s in samples.items():
    out[arm] = s[::max(1, len(s) // classes)][:classes]
  return {"samples": out, "real": np.stack([images[labels == c][0] for c in range(classes)])}


def save_per_class_grid(ctx: Any, data: dict[str, Any], name: str = "samples.png"
                        ) -> tuple[str, list[str]]:
  """Writes the grid (real row first, then one row per arm) to ctx.out(name); returns (path,
  the arms in row order)."""
  from tokenlab.evals.image import save_image_grid
  arms = list(data["samples"])
  grid = np.stack([data["real"]] + [data["samples"][a] for a in arms])
  return save_image_grid(grid, ctx.out(name)), arms
