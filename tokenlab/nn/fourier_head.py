"""Fourier head (Gillman et al., arXiv 2410.22269): a drop-in for a linear head over bins.

A linear head maps a hidden state to one logit per bin, so neighbouring bins are unrelated.
The Fourier head instead outputs a continuous density on [-1, 1] written as a Fourier series
with `num_frequencies` (N) terms, and the categorical law over bins is that density at the
bin centres. The density is non-negative by construction:

  a = (a_0..a_N) in C^{N+1}              (a linear layer: 2 (N+1) real outputs)
  c_k = sum_j a_{j+k} conj(a_j)          (autocorrelation, k = 0..N; c_0 = sum |a_j|^2 > 0)
  p(x) = 1/2 + Re sum_{k>=1} (c_k / c_0) e^{i pi k x} = |sum_j a_j e^{i pi j x}|^2 / (2 c_0)

so p >= 0 and integrates to 1 on [-1, 1]. pmf = p(bin centres) / sum; the logits are
log(pmf + 1e-5) as in the reference implementation, so softmax(logits) ~ pmf and any
cross-entropy code works unchanged. N = 0 (or a = (a_0, 0, ...)) gives the uniform law.

Smoothness regulariser (the paper's): gamma * sum_k 2 pi^2 k^2 |c_k / c_0|^2, the squared
L2 norm of the density's derivative, which penalises high frequencies.

  head = FourierHead(num_bins=64, num_frequencies=8)
  logits, aux = head(h, return_aux=True)     # aux: pmf, coeffs (normalised c_k)
  loss += gamma * fourier_smoothness_penalty(aux["coeffs"]).mean()

All arithmetic is real (no complex dtypes, so it runs under bfloat16 / on TPU); the head's
computation is done in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.nn.layers import DenseGeneral

LOGIT_EPS = 1e-5   # logits = log(pmf + LOGIT_EPS), as in the reference


def bin_centres(num_bins: int) -> np.ndarray:
  """Centres of `num_bins` equal bins of the head's domain [-1, 1]."""
  edges = np.linspace(-1.0, 1.0, num_bins + 1)
  return (edges[:-1] + edges[1:]) / 2


def autocorrelate(re: jax.Array, im: jax.Array) -> tuple[jax.Array, jax.Array]:
  """c_k = sum_j a_{j+k} conj(a_j) for k = 0..N, a = re + i im of shape (..., N+1).

  Returns (Re c, Im c), each (..., N+1).
  """
  n = re.shape[-1]
  # shift[k, m, j] = 1 where m = j + k: c_k = sum_{m,j} shift[k,m,j] a_m conj(a_j).
  shift = np.zeros((n, n, n), np.float32)
  for k in range(n):
    for j in range(n - k):
      shift[k, j + k, j] = 1.0
  rr = jnp.einsum("...m,...j->...mj", re, re) + jnp.einsum("...m,...j->...mj", im, im)
  ri = jnp.einsum("...m,...j->...mj", im, re) - jnp.einsum("...m,...j->...mj", re, im)
  return (jnp.einsum("...mj,kmj->...k", rr, shift), jnp.einsum("...mj,kmj->...k", ri, shift))


def fourier_density(coeff_re: jax.Array, coeff_im: jax.Array, x: jax.Array) -> jax.Array:
  """p(x) = 1/2 + sum_{k>=1} Re(c_k e^{i pi k x}) for normalised c (c_0 = 1); x (P,) ->
  (..., P)."""
  k = jnp.arange(coeff_re.shape[-1], dtype=jnp.float32)[1:]
  angle = jnp.pi * k[:, None] * x[None, :]                       # (N, P)
  return 0.5 + (jnp.einsum("...k,kp->...p", coeff_re[..., 1:], jnp.cos(angle))
                - jnp.einsum("...k,kp->...p", coeff_im[..., 1:], jnp.sin(angle)))


def fourier_pmf(re: jax.Array, im: jax.Array, num_bins: int) -> tuple[jax.Array, jax.Array]:
  """(pmf over bins (..., num_bins), normalised coefficients (..., N+1, 2)) from a = re+i im."""
  c_re, c_im = autocorrelate(re.astype(jnp.float32), im.astype(jnp.float32))
  c0 = c_re[..., :1] + 1e-12
  c_re, c_im = c_re / c0, c_im / c0
  pdf = fourier_density(c_re, c_im, jnp.asarray(bin_centres(num_bins), jnp.float32))
  pdf = jnp.maximum(pdf, 0.0)   # >= 0 up to rounding already; this removes -1e-8s
  pmf = pdf / jnp.sum(pdf, axis=-1, keepdims=True)
  return pmf, jnp.stack([c_re, c_im], axis=-1)


def fourier_smoothness_penalty(coeffs: jax.Array) -> jax.Array:
  """sum_k 2 pi^2 k^2 |c_k|^2 of normalised coefficients (..., N+1, 2) -> (...)."""
  k = jnp.arange(coeffs.shape[-2], dtype=jnp.float32)
  return jnp.sum(2 * jnp.pi ** 2 * k ** 2 * jnp.sum(coeffs.astype(jnp.float32) ** 2, -1), -1)


class FourierHead(nn.Module):
  """hidden (..., d) -> logits over `num_bins` (..., num_bins); see the module docstring."""
  num_bins: int
  num_frequencies: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, return_aux: bool = False):
    n = self.num_frequencies + 1
    a = DenseGeneral((2, n), ("embed", None, None), use_bias=True,
                     param_dtype=self.param_dtype, name="coefficients")(x)
    a = a.astype(jnp.float32)
    pmf, coeffs = fourier_pmf(a[..., 0, :], a[..., 1, :], self.num_bins)
    logits = jnp.log(pmf + LOGIT_EPS)
    if return_aux:
      return logits, {"pmf": pmf, "coeffs": coeffs}
    return logits
