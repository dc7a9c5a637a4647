"""Spectral (FFT-domain) token mixing, written once: a global filter over a token grid.

GFNet (Rao et al., NeurIPS 2021, arXiv 2107.00645) replaces self-attention by
`x -> irfftn(W * rfftn(x))`: an FFT over the token axes (here the (t, h, w) grid of a video
latent, or any grid), an element-wise product with a learned complex filter W (one complex
number per frequency and channel), and the inverse FFT. FNet (Lee-Thorp et al. 2021) is the
parameter-free special case (W = 1, real part). MotionAura's spectral transformer denoiser
(Susladkar et al. 2024, arXiv 2410.07659) mixes video tokens in the frequency domain this way.

Properties the tests check (they follow from the convolution theorem): the mixing is a
circular convolution over the grid, so it is equivariant to circular shifts of the grid, and
one token's change reaches every token (global mixing) through a single layer. Cost per
layer: O(N D log N) for N tokens of width D (the FFTs) plus N D for the filter, against
O(N^2 D + N D^2) for attention; `spectral_mixing_flops` / `attention_mixing_flops` give the
counts (what the MotionAura reproduction states next to its parameter counts).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.layers import RMSNorm, SwiGLU, param_with_axes


def frequency_shape(grid: tuple[int, ...]) -> tuple[int, ...]:
  """Shape of rfftn's output over a grid: the last axis keeps grid[-1] // 2 + 1 frequencies."""
  return (*grid[:-1], grid[-1] // 2 + 1)


class GlobalFilter(nn.Module):
  """GFNet's global filter: x (B, N, D) with N = prod(grid) -> (B, N, D).

  The tokens are laid out as the grid (row-major), FFT'd over the grid axes (`norm='ortho'`,
  so an all-ones filter is the identity), multiplied by the learned complex filter
  (`frequency_shape(grid) + (D,)`, real and imaginary parts stored as two float parameters,
  initialised normal(0, init_scale) as GFNet does) and transformed back. Computed in float32.
  """
  grid: tuple[int, ...]
  init_scale: float = 0.02
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, dim = x.shape
    if math.prod(self.grid) != length:
      raise ValueError(f"GlobalFilter: {length} tokens do not form the grid {self.grid} "
                       f"({math.prod(self.grid)} tokens)")
    shape = (*frequency_shape(self.grid), dim)
    axes = (None,) * len(self.grid) + ("embed",)
    init = nn.initializers.normal(self.init_scale)
    real = param_with_axes(self, "filter_real", init, shape, axes, self.param_dtype)
    imag = param_with_axes(self, "filter_imag", init, shape, axes, self.param_dtype)
    spatial = tuple(range(1, 1 + len(self.grid)))
    h = x.astype(jnp.float32).reshape(batch, *self.grid, dim)
    f = jnp.fft.rfftn(h, axes=spatial, norm="ortho")
    f = f * jax.lax.complex(real.astype(jnp.float32), imag.astype(jnp.float32))
    y = jnp.fft.irfftn(f, s=self.grid, axes=spatial, norm="ortho")
    return y.reshape(batch, length, dim).astype(x.dtype)


class SpectralBlock(nn.Module):
  """GFNet block, pre-norm like tokenlab's TransformerBlock with the attention swapped out:
  x + GlobalFilter(RMSNorm(x)); x + SwiGLU(RMSNorm(x)). (B, N, D) in and out, N = prod(grid).
  """
  grid: tuple[int, ...]
  mlp_dim: int
  init_scale: float = 0.02
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = RMSNorm(param_dtype=self.param_dtype, name="filter_norm")(x)
    x = x + GlobalFilter(self.grid, self.init_scale, self.param_dtype, name="filter")(h)
    h = RMSNorm(param_dtype=self.param_dtype, name="mlp_norm")(x)
    return x + SwiGLU(self.mlp_dim, param_dtype=self.param_dtype, name="mlp")(h)


def spectral_mixing_flops(grid: tuple[int, ...], dim: int) -> float:
  """Forward FLOPs of one GlobalFilter on one example: a real FFT and its inverse
  (2.5 N log2 N real FLOPs per channel each, the usual radix-2 count for a real transform of
  N points) plus the complex filter product (6 FLOPs per kept frequency and channel)."""
  n = math.prod(grid)
  fft = 2.5 * n * math.log2(max(n, 2)) * dim
  return 2 * fft + 6.0 * math.prod(frequency_shape(grid)) * dim


def attention_mixing_flops(length: int, dim: int) -> float:
  """Forward FLOPs of one multi-head self-attention (heads x head_dim = dim) on one example:
  q, k, v and output projections (8 N D^2) plus scores and weighted values (4 N^2 D)."""
  return 8.0 * length * dim * dim + 4.0 * length * length * dim
