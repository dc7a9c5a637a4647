"""Next-scale prediction utilities (VAR, Tian et al. 2024, arXiv 2404.02905).

A latent map f (B, H, W, D) is tokenized coarse to fine on scales s_1 < ... < s_K = H (e.g.
1, 2, 4, 8): residual r = f; for each scale, z_k = down(r, s_k) is quantized to q_k (codes
s_k x s_k) and r -= up(q_k, H). The reconstruction is f_hat = sum_k up(q_k, H); when the last
scale is full resolution and quantization is exact, f_hat = f exactly.

A transformer predicts all tokens of scale k at once from the tokens of scales < k: the
sequence is the scales' token maps flattened in order (L = sum s_k^2 tokens), the attention
mask is block-causal over scales (`block_causal_mask`), and the input at scale k's positions
is down(f_hat_{<k}, s_k), the running reconstruction resampled to the scale being predicted
(`next_scale_inputs`; the first scale's input is the class / start token instead).

Resampling: `downsample` is area averaging (VAR's `F.interpolate(mode='area')`), `upsample` is
bicubic by default (VAR) or nearest / bilinear. VAR also applies a small conv ("phi") after
upsampling; that learned part belongs to the tokenizer, not here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.quantizers import nearest_code

# z (B, s, s, D) -> (codes (B, s, s) int, quantized values (B, s, s, D))
QuantizeFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def default_scales(size: int) -> tuple[int, ...]:
  """(1, 2, 4, ..., size) for a power-of-two latent side."""
  if size < 1 or size & (size - 1):
    raise ValueError(f"default_scales needs a power-of-two size, got {size}; pass scales "
                     f"explicitly, e.g. (1, 2, 3, 4, 6, {size})")
  return tuple(2 ** i for i in range(int(np.log2(size)) + 1))


def token_counts(scales: Sequence[int]) -> tuple[int, ...]:
  """Tokens per scale (s^2 each)."""
  return tuple(s * s for s in scales)


def scale_ids(scales: Sequence[int]) -> np.ndarray:
  """(L,) int: the scale index of every token of the flattened multi-scale sequence."""
  return np.repeat(np.arange(len(scales)), token_counts(scales))


def block_causal_mask(block_sizes: Sequence[int]) -> np.ndarray:
  """(L, L) bool, L = sum(block_sizes): token i may attend to token j iff j's block is not
  after i's. Blocks are VAR's scales (sizes s^2), xAR's entities, or video frames; every
  token sees its whole block and all earlier blocks (pass `mask=` to dot_product_attention
  after broadcasting to (1, 1, L, L))."""
  ids = np.repeat(np.arange(len(block_sizes)), block_sizes)
  return ids[None, :] <= ids[:, None]


def downsample(x: jax.Array, size: int) -> jax.Array:
  """(B, H, W, D) -> (B, size, size, D) by area averaging (exact block means when size
  divides H and W; antialiased linear resampling otherwise)."""
  b, h, w, d = x.shape
  if (h, w) == (size, size):
    return x
  if h % size == 0 and w % size == 0:
    return x.reshape(b, size, h // size, size, w // size, d).mean(axis=(2, 4))
  return jax.image.resize(x, (b, size, size, d), method="linear", antialias=True)


def upsample(x: jax.Array, size: int, method: str = "bicubic") -> jax.Array:
  """(B, s, s, D) -> (B, size, size, D); method 'bicubic' (VAR), 'linear' or 'nearest'."""
  b, h, w, d = x.shape
  if (h, w) == (size, size):
    return x
  return jax.image.resize(x, (b, size, size, d), method=method)


def codebook_quantizer(codebook: jax.Array) -> QuantizeFn:
  """A QuantizeFn of the nearest entry of a shared (K, D) codebook (VAR shares one codebook
  across scales)."""
  def quantize(z):
    codes = nearest_code(z, codebook)
    return codes, jnp.take(codebook, codes, axis=0).astype(z.dtype)
  return quantize


def multiscale_quantize(f: jax.Array, scales: Sequence[int], quantize_fn: QuantizeFn, *,
                        up_method: str = "bicubic"
                        ) -> tuple[list[jax.Array], list[jax.Array], jax.Array, jax.Array]:
  """Residual quantization of a latent map over scales.

  Args:
    f: (B, H, W, D) latent map, H == W == the last scale.
    scales: increasing sides, e.g. (1, 2, 4, 8).
    quantize_fn: z (B, s, s, D) -> (codes (B, s, s), values (B, s, s, D)).
  Returns:
    codes: per scale (B, s, s); values: per scale (B, s, s, D) (the quantized residuals);
    f_hat: (B, H, W, D) the reconstruction sum_k up(values_k); residual_norms: (K,) the
    RMS of the residual left after each scale (shrinks as scales are added).
  """
  size = f.shape[1]
  if f.shape[1] != f.shape[2] or scales[-1] != size:
    raise ValueError(f"latent map {f.shape[1]}x{f.shape[2]} must be square with side equal "
                     f"to the last scale {scales[-1]}")
  residual, f_hat = f, jnp.zeros_like(f)
  codes, values, norms = [], [], []
  for s in scales:
    c, q = quantize_fn(downsample(residual, s))
    up = upsample(q, size, up_method)
    residual, f_hat = residual - up, f_hat + up
    codes.append(c)
    values.append(q)
    norms.append(jnp.sqrt(jnp.mean(jnp.square(residual.astype(jnp.float32)))))
  return codes, values, f_hat, jnp.stack(norms)


def reconstruct(values: Sequence[jax.Array], size: int, *, up_method: str = "bicubic"
                ) -> jax.Array:
  """Per-scale values (B, s, s, D) -> f_hat (B, size, size, D), the sum of their upsamples
  (also: the running reconstruction of the first k scales when given values[:k])."""
  return sum(upsample(v, size, up_method) for v in values)


def accumulate(f_hat: jax.Array, values: jax.Array, next_size: int | None, *,
               up_method: str = "bicubic") -> tuple[jax.Array, jax.Array | None]:
  """One generation step: add scale k's values (B, s, s, D) to the running f_hat
  (B, H, W, D); return (f_hat, the next scale's input down(f_hat, next_size) or None)."""
  f_hat = f_hat + upsample(values, f_hat.shape[1], up_method)
  return f_hat, None if next_size is None else downsample(f_hat, next_size)


def next_scale_inputs(values: Sequence[jax.Array], scales: Sequence[int], *,
                      up_method: str = "bicubic") -> jax.Array:
  """Teacher-forcing inputs for scales 2..K: (B, sum_{k>=2} s_k^2, D), scale k's positions
  holding down(f_hat_{<k}, s_k) flattened in raster order (VAR's idxBl_to_var_input). The
  model's full input sequence prepends the start / class token(s) for scale 1."""
  size, b, d = scales[-1], values[0].shape[0], values[0].shape[-1]
  f_hat = jnp.zeros((b, size, size, d), values[0].dtype)
  out = []
  for k in range(len(scales) - 1):
    f_hat, nxt = accumulate(f_hat, values[k], scales[k + 1], up_method=up_method)
    out.append(nxt.reshape(b, -1, d))
  return jnp.concatenate(out, axis=1)


def flatten_scales(codes: Sequence[jax.Array]) -> jax.Array:
  """Per-scale codes (B, s, s) -> (B, L) in scale order, each scale in raster order."""
  return jnp.concatenate([c.reshape(c.shape[0], -1) for c in codes], axis=1)


def unflatten_scales(tokens: jax.Array, scales: Sequence[int]) -> list[jax.Array]:
  """(B, L) -> per-scale (B, s, s); the inverse of `flatten_scales`."""
  bounds = np.cumsum((0,) + token_counts(scales))
  return [tokens[:, bounds[k]:bounds[k + 1]].reshape(tokens.shape[0], s, s)
          for k, s in enumerate(scales)]
