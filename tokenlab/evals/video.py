"""Video evaluation helpers: clips as PNG strips (frames side by side) and animated GIFs.

- :func:`save_video_strip`: one clip (T, H, W, C) as one row of T frames, or clips
  (N, T, H, W, C) as N rows, in [0, 1], written as PNG (the layout of
  `tokenlab.evals.image.image_grid`: 1-pixel mid-grey separators, grayscale shown as RGB).
- :func:`save_video_gif`: the same rows animated, one GIF frame per time step.
"""

from __future__ import annotations

import os

import numpy as np

from tokenlab.evals import image


def _rows(videos: np.ndarray) -> np.ndarray:
  """(T, H, W, C) or (N, T, H, W, C) -> float32 (N, T, H, W, C) in [0, 1] (uint8 / 255)."""
  x = np.asarray(videos)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  if x.ndim == 4:
    x = x[None]
  if x.ndim != 5:
    raise ValueError(f"videos must be (T, H, W, C) or (N, T, H, W, C), got {x.shape}")
  return x


def _min_scale(x: np.ndarray) -> int:
  """The integer upscaling that shows frames of x (N, T, H, W, C) at least 64 px high."""
  return max(1, -(-64 // x.shape[2]))


def save_video_strip(videos: np.ndarray, path: str, scale: int = 0) -> str:
  """Writes clips as a PNG strip at `path`: row n = clip n's T frames left to right.

  Args:
    videos: (T, H, W, C) or (N, T, H, W, C), uint8 or float in [0, 1].
    path: the PNG's path (directories created).
    scale: integer upscaling (0: frames at least 64 px high).

  Returns:
    path.
  """
  x = _rows(videos)
  return image.save_image_grid(x, path, scale or _min_scale(x))


def save_video_gif(videos: np.ndarray, path: str, scale: int = 0, fps: float = 8.0) -> str:
  """Writes clips (T, H, W, C) or (N, T, H, W, C) as an animated GIF at `path`: the N clips
  stacked in one column, frame t of the GIF showing frame t of every clip, upscaled by
  `scale` (0: frames at least 64 px high); returns path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  x = _rows(videos)
  frames = [image.image_grid(x[:, t][:, None]) for t in range(x.shape[1])]  # (N, 1) grids
  scale = scale or _min_scale(x)
  pictures = [Image.fromarray(np.repeat(np.repeat(f, scale, 0), scale, 1)) for f in frames]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  pictures[0].save(path, save_all=True, append_images=pictures[1:], loop=0,
                   duration=int(round(1000 / fps)))
  return path
