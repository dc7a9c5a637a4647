"""Pattention: token-parameter attention, TokenFormer's replacement for a linear layer
(Wang et al., "TokenFormer: Rethinking Transformer Scaling with Tokenized Model Parameters",
arXiv 2410.23168).

    Pattention(X) = Theta(X K_P^T) V_P,   K_P (n, d_in), V_P (n, d_out)

The input tokens are queries, the n *parameter tokens* are keys and values. Theta is the
paper's modified softmax: an L2 normalisation of each row of scores, rescaled by sqrt(n),
followed by GeLU:  Theta(A)_ij = GeLU(A_ij / ||A_i||_2 * sqrt(n)).

Growing a layer appends parameter tokens (`grow_parameter_tokens`). Zero keys add zero
scores, so ||A_i|| is unchanged and GeLU(0) = 0 gives the new tokens zero weight whatever
their values; the old tokens' scores are unchanged only if the sqrt(n) factor stays at the
old n, hence `norm_tokens`, which holds that factor at a fixed count.

Parameters carry logical axis names: the token axis is named ``mlp`` (it plays the part of an
MLP's hidden width, and is sharded like one: A = X K^T column-parallel, Theta(A) V_P
row-parallel) and the feature axes ``embed``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.layers import default_init, param_with_axes

TOKEN_AXIS = "mlp"


def modified_softmax(scores: jax.Array, norm_tokens: int, epsilon: float = 1e-6) -> jax.Array:
  """Theta(A) = GeLU(A / ||A||_2 * sqrt(norm_tokens)) over the last axis, in float32.

  scores (..., n) -> (..., n). `epsilon` keeps an all-zero row finite (it maps to zeros).
  """
  a = scores.astype(jnp.float32)
  inv_norm = jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + epsilon * epsilon)
  return jax.nn.gelu(a * inv_norm * math.sqrt(norm_tokens), approximate=False)


class Pattention(nn.Module):
  """x (..., d_in) -> (..., features) through `num_tokens` key/value parameter tokens.

  Attributes:
    num_tokens: n, the number of parameter tokens.
    features: d_out.
    norm_tokens: the n in Theta's sqrt(n) factor; 0 = `num_tokens`. A grown layer keeps the
      pre-growth count here to compute exactly the function it was grown from.
  """
  num_tokens: int
  features: int
  norm_tokens: int = 0
  param_dtype: Any = jnp.float32
  key_init: Any = default_init
  value_init: Any = default_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    keys = param_with_axes(self, "key_tokens", self.key_init, (self.num_tokens, x.shape[-1]),
                           (TOKEN_AXIS, "embed"), self.param_dtype)
    values = param_with_axes(self, "value_tokens", self.value_init,
                             (self.num_tokens, self.features), (TOKEN_AXIS, "embed"),
                             self.param_dtype)
    scores = jnp.einsum("...d,nd->...n", x, keys.astype(x.dtype))
    if scores.ndim == 3:
      scores = nn.with_logical_constraint(scores, ("batch", "length", TOKEN_AXIS))
    weights = modified_softmax(scores, self.norm_tokens or self.num_tokens).astype(x.dtype)
    return jnp.einsum("...n,nf->...f", weights, values.astype(x.dtype))


def grow_parameter_tokens(old: jax.Array, fresh: jax.Array, *, zero: bool) -> jax.Array:
  """Parameter tokens of a grown layer: `old` (..., n_old, d) in the first slots, then the
  last n_new - n_old tokens of `fresh` (..., n_new, d), or zeros when `zero`.

  The token axis is the second to last, so stacked (scanned) layers (L, n, d) grow too.
  """
  if (old.ndim != fresh.ndim or old.shape[:-2] != fresh.shape[:-2]
      or old.shape[-1] != fresh.shape[-1] or old.shape[-2] > fresh.shape[-2]):
    raise ValueError(f"cannot grow parameter tokens of shape {tuple(old.shape)} into "
                     f"{tuple(fresh.shape)}: only the token axis (-2) may grow")
  tail = fresh[..., old.shape[-2]:, :]
  if zero:
    tail = jnp.zeros_like(tail)
  return jnp.concatenate([jnp.asarray(old, fresh.dtype), tail], axis=-2)
