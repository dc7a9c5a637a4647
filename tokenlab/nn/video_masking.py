"""Masking schedules for video token grids, written once.

A video tokenizer turns a clip into a grid of t x h x w tokens (latent frames x rows x
columns); masked modeling hides part of that grid and asks a model to fill it in. Three
shapes of mask, all True = masked:

* `random_mask`: a uniformly random subset of exactly round(ratio * n) positions per clip
  (BERT / MAE / MaskGIT style, the patch-masking baseline).
* `frame_mask`: exactly round(ratio * T) whole frames per clip (MotionAura's full-frame
  masking: the model must predict a frame from the frames around it, which forces it to
  model motion rather than copy neighbouring patches).
* `cube_mask`: a union of ct x ch x cw cubes at random corners, added one by one until at
  least ceil(ratio * n) positions are masked (VIOLET's blockwise masking, the 3-D form of
  BEiT's blocks: a masked cube cannot be filled from its own spatial or temporal neighbours).

All take a jax PRNG key and are jittable (shapes static, `ratio` a Python float).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.corruption import random_subset


def _check_ratio(ratio: float) -> None:
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"mask ratio {ratio}: must be in [0, 1]")


def random_mask(rng: jax.Array, shape: tuple[int, ...], ratio: float) -> jax.Array:
  """shape (B, ...) -> bool (B, ...): exactly round(ratio * n) positions masked per row,
  n = prod(shape[1:]), uniformly at random."""
  _check_ratio(ratio)
  batch, n = shape[0], int(np.prod(shape[1:]))
  count = jnp.full((batch,), round(ratio * n), jnp.int32)
  flat = random_subset(rng, jnp.ones((batch, n), bool), count)
  return flat.reshape(shape)


def frame_mask(rng: jax.Array, batch: int, frames: int, ratio: float) -> jax.Array:
  """bool (batch, frames): exactly round(ratio * frames) whole frames masked per clip.

  Broadcast it over a token grid as `mask[:, :, None, None]` (B, t, 1, 1): every token of a
  masked frame is masked, none of an unmasked one."""
  return random_mask(rng, (batch, frames), ratio)


def cube_corners(grid: tuple[int, int, int], cube: tuple[int, int, int]) -> np.ndarray:
  """(num_corners, 3) int: every (t0, y0, x0) where a `cube` fits inside `grid`."""
  if len(grid) != 3 or len(cube) != 3:
    raise ValueError(f"grid {grid} and cube {cube}: both must be (t, h, w)")
  if any(c < 1 or c > g for c, g in zip(cube, grid)):
    raise ValueError(f"cube {cube} does not fit in the token grid {grid}: each side must be "
                     f"between 1 and the grid's")
  axes = [np.arange(g - c + 1) for g, c in zip(grid, cube)]
  return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _one_cube_mask(rng: jax.Array, grid: tuple[int, int, int], cube: tuple[int, int, int],
                   target: int) -> jax.Array:
  corners = jnp.asarray(cube_corners(grid, cube))
  order = jax.random.permutation(rng, corners.shape[0])
  t, y, x = (jnp.arange(g) for g in grid)

  def add(mask, corner):
    inside = ((t[:, None, None] >= corner[0]) & (t[:, None, None] < corner[0] + cube[0])
              & (y[None, :, None] >= corner[1]) & (y[None, :, None] < corner[1] + cube[1])
              & (x[None, None, :] >= corner[2]) & (x[None, None, :] < corner[2] + cube[2]))
    # Stop adding once the target is reached: the union is then a mask of whole cubes with
    # coverage >= target, and at most one cube past it.
    grow = jnp.sum(mask) < target
    return jnp.where(grow, mask | inside, mask), None

  # Every corner in some order: their union is the whole grid, so the target is always met.
  mask, _ = jax.lax.scan(add, jnp.zeros(grid, bool), corners[order])
  return mask


def cube_mask(rng: jax.Array, batch: int, grid: tuple[int, int, int], ratio: float,
              cube: tuple[int, int, int] = (2, 2, 2)) -> jax.Array:
  """bool (batch, t, h, w): per clip, a union of `cube`-shaped blocks (ct, ch, cw) at random
  corners, added until at least ceil(ratio * t * h * w) positions are masked (ratio 0: none).

  Every masked position lies in a fully masked cube of the given size (cubes may overlap).
  """
  _check_ratio(ratio)
  grid, cube = tuple(int(g) for g in grid), tuple(int(c) for c in cube)
  target = math.ceil(ratio * int(np.prod(grid)))
  rngs = jax.random.split(rng, batch)
  return jax.vmap(lambda r: _one_cube_mask(r, grid, cube, target))(rngs)
