"""Losses written once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tokenlab.method import Average


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Negative log-likelihood in nats of each target token, computed in float32.

  logits: (..., vocab); targets: (...) int -> (...) float32.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def classification_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                        label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
  """Masked softmax cross-entropy of an image (or sequence) classifier, in float32.

  logits (B, classes), labels (B,) int, mask (B,) (padding rows of eval batches weigh 0) ->
  (mean loss over the weighted rows, {'loss', 'accuracy'} as `Average`s for the trainer).
  """
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  weight = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  target = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  ce = optax.softmax_cross_entropy(logits, target)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  total = jnp.sum(weight)
  return jnp.sum(ce * weight) / jnp.maximum(total, 1.0), {
      "loss": Average.of(jnp.sum(ce * weight), total),
      "accuracy": Average.of(jnp.sum(correct * weight), total)}
