"""Image evaluation: PSNR of reconstructions, bits per image, and PNG grids.

- :func:`psnr_per_image`: peak signal-to-noise ratio of each image (images in [0, max_value]),
  10 log10(max^2 / MSE), MSE over all pixels and channels of that image; the reported PSNR of
  a set is the mean over images (as image-tokenizer papers report it), not the PSNR of the
  pooled MSE. Identical images are capped at `PSNR_CAP` dB instead of infinity.
- :func:`reconstruction_metrics`: masked per-batch sums (`Average`s) of MSE and PSNR, so means
  over eval batches and devices are exact, plus bits per image.
- :func:`bits_per_image`: code positions per image x bits per position (log2 of the codebook
  size, summed over code streams).
- :func:`image_grid` / :func:`save_image_grid`: a (rows, cols, H, W, C) or (N, H, W, C) batch
  of images in [0, 1] as one uint8 picture with 1-pixel separators, written as PNG.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.method import Average

PSNR_CAP = 100.0   # dB, what an exact reconstruction scores (MSE floored at 1e-10)


def psnr_per_image(images: jax.Array, recon: jax.Array, max_value: float = 1.0) -> jax.Array:
  """images, recon (B, H, W, C) in [0, max_value] -> (B,) PSNR in dB (recon clipped first)."""
  recon = jnp.clip(recon, 0.0, max_value)
  diff = (images - recon).astype(jnp.float32)
  mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, images.ndim)))
  mse = jnp.maximum(mse, max_value ** 2 * 10.0 ** (-PSNR_CAP / 10))
  return 10.0 * jnp.log10(max_value ** 2 / mse)


def bits_per_image(codes_per_image: int, bits_per_token: float) -> float:
  """Bits of one image's codes: positions x bits per position (all code streams)."""
  return float(codes_per_image * bits_per_token)


def reconstruction_metrics(images: jax.Array, recon: jax.Array, mask: jax.Array | None = None,
                           bits: float | None = None) -> dict[str, Average]:
  """{'mse', 'psnr'[, 'bits_per_image']} as masked Averages over the images of a batch.

  images, recon (B, H, W, C) in [0, 1]; mask (B,) (1 = a real image, 0 = padding of the last
  eval batch); `mse` is of the unclipped reconstruction (what a loss sees), `psnr` of the
  clipped one (what a viewer sees).
  """
  b = images.shape[0]
  mask = jnp.ones((b,), jnp.float32) if mask is None else mask.astype(jnp.float32)
  count = jnp.sum(mask)
  mse = jnp.mean(jnp.square((recon - images).astype(jnp.float32)),
                 axis=tuple(range(1, images.ndim)))
  out = {"mse": Average.of(jnp.sum(mse * mask), count),
         "psnr": Average.of(jnp.sum(psnr_per_image(images, recon) * mask), count)}
  if bits is not None:
    out["bits_per_image"] = Average.of(bits * count, count)
  return out


def image_grid(images: np.ndarray, pad: int = 1) -> np.ndarray:
  """(rows, cols, H, W, C) or (N, H, W, C) floats in [0, 1] -> (R(H+pad)+pad, ..., 3) uint8.

  N images are laid out in ceil(sqrt(N)) columns; grayscale (C = 1) is repeated to RGB;
  separators are mid-grey so both black and white images stay visible.
  """
  images = np.asarray(images, np.float32)
  if images.ndim == 4:
    n = images.shape[0]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = -(-n // cols)
    blank = np.zeros((rows * cols - n, *images.shape[1:]), np.float32)
    images = np.concatenate([images, blank]).reshape(rows, cols, *images.shape[1:])
  if images.ndim != 5:
    raise ValueError(f"image_grid takes (N, H, W, C) or (rows, cols, H, W, C), got "
                     f"{images.shape}")
  rows, cols, h, w, c = images.shape
  if c == 1:
    images = np.repeat(images, 3, axis=-1)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 0.5, np.float32)
  for r in range(rows):
    for k in range(cols):
      y, x = pad + r * (h + pad), pad + k * (w + pad)
      grid[y:y + h, x:x + w] = images[r, k, ..., :3]
  return np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)


def save_image_grid(images: np.ndarray, path: str, scale: int = 0) -> str:
  """Writes :func:`image_grid` of `images` as a PNG at `path` (directories created), upscaled
  by `scale` (0: enough for small images to be visible, about 256 px wide); returns path."""
  from PIL import Image
  grid = image_grid(images)
  if scale <= 0:
    scale = max(1, 256 // grid.shape[1])
  if scale > 1:
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path)
  return path
