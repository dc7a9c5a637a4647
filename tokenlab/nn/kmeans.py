"""k-means, written once: k-means++ seeding (Arthur & Vassilvitskii 2007) and Lloyd steps,
jitted, with optional per-point weights (0 = padding, left out).

The discrete units of speech LMs (HuBERT / GSLM units: k-means over a self-supervised
encoder's frame features) are ids from `assign(features, centroids)`.

- `kmeans_plus_plus(rng, x, k)`: the first centroid uniform over the points, each next one
  drawn with probability proportional to the squared distance to the nearest one chosen.
- `lloyd_step(x, centroids)`: assign each point to its nearest centroid, move each centroid
  to the mean of its points; a centroid with no points stays where it is. Neither half can
  raise the inertia (sum of weighted squared distances to the nearest centroid), so it never
  increases from step to step.
- `kmeans(rng, x, k, iters)` -> `KMeans(centroids (k, D), inertia (iters + 1,))`: the
  inertia after seeding and after each step.

Nearest-centroid search is `nearest_code` of tokenlab/nn/quantizers.py (one implementation).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tokenlab.nn.quantizers import nearest_code

__all__ = ["KMeans", "kmeans", "kmeans_plus_plus", "lloyd_step", "assign", "inertia"]


class KMeans(NamedTuple):
  centroids: jax.Array   # (k, D) float32
  inertia: jax.Array     # (iters + 1,) after seeding, then after each Lloyd step


def _weights(x: jax.Array, weights: jax.Array | None) -> jax.Array:
  return jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)


def _sq_dist_to_nearest(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """(N,) squared distance of each point to its nearest centroid."""
  nearest = centroids[nearest_code(x, centroids)]
  return jnp.sum(jnp.square(x - nearest), axis=-1)


def assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """x (..., D), centroids (k, D) -> (...,) int32 id of the nearest centroid."""
  return nearest_code(x, centroids)


def inertia(x: jax.Array, centroids: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Sum over points of weight x squared distance to the nearest centroid; x (N, D)."""
  return jnp.sum(_weights(x, weights) * _sq_dist_to_nearest(x, centroids))


def kmeans_plus_plus(rng: jax.Array, x: jax.Array, k: int,
                     weights: jax.Array | None = None) -> jax.Array:
  """k-means++ seeding: (k, D) centroids chosen among the points x (N, D) of weight > 0."""
  x = x.astype(jnp.float32)
  w = _weights(x, weights)
  rngs = jax.random.split(rng, k)
  first = jax.random.categorical(rngs[0], jnp.where(w > 0, 0.0, -jnp.inf))
  centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(x[first])
  d2 = jnp.sum(jnp.square(x - x[first]), axis=-1)

  def body(i, carry):
    centroids, d2 = carry
    p = w * d2
    # All remaining weight at distance 0 (fewer distinct points than k): draw uniformly.
    logits = jnp.where(jnp.sum(p) > 0, jnp.log(jnp.maximum(p, 0.0)),
                       jnp.where(w > 0, 0.0, -jnp.inf))
    pick = jax.random.categorical(rngs[i], logits)
    centroids = centroids.at[i].set(x[pick])
    return centroids, jnp.minimum(d2, jnp.sum(jnp.square(x - x[pick]), axis=-1))

  centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, d2))
  return centroids


def lloyd_step(x: jax.Array, centroids: jax.Array,
               weights: jax.Array | None = None) -> jax.Array:
  """One Lloyd iteration: (k, D) centroids moved to the weighted means of their points."""
  x = x.astype(jnp.float32)
  w = _weights(x, weights)
  ids = nearest_code(x, centroids)
  k = centroids.shape[0]
  counts = jax.ops.segment_sum(w, ids, num_segments=k)
  sums = jax.ops.segment_sum(x * w[:, None], ids, num_segments=k)
  means = sums / jnp.maximum(counts, 1e-12)[:, None]
  return jnp.where(counts[:, None] > 0, means, centroids)


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def kmeans(rng: jax.Array, x: jax.Array, k: int, iters: int = 20,
           weights: jax.Array | None = None) -> KMeans:
  """k-means++ seeding then `iters` Lloyd steps on x (N, D) (weights (N,), 0 = ignore)."""
  x = x.astype(jnp.float32)
  seeds = kmeans_plus_plus(rng, x, k, weights)

  def body(centroids, _):
    new = lloyd_step(x, centroids, weights)
    return new, inertia(x, new, weights)

  centroids, history = jax.lax.scan(body, seeds, None, length=iters)
  return KMeans(centroids, jnp.concatenate([inertia(x, seeds, weights)[None], history]))
