"""Losses written once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Negative log-likelihood in nats of each target token, computed in float32.

  logits: (..., vocab); targets: (...) int -> (...) float32.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
