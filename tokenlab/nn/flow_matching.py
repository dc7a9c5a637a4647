"""Flow matching with the linear (rectified-flow) path, an Euler sampler and a small MLP head.

Convention (Liu et al. 2022, rectified flow; Lipman et al. 2022): t runs from noise to data,

    x_t = (1 - t) x0 + t x1,   x0 ~ N(0, I) noise,  x1 data,   target velocity v = x1 - x0,

and sampling integrates dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data). xAR and SD3 write
the same path with t reversed (x_t = (1 - t) x + t eps, v = eps - x): a method following them
passes 1 - t and negates the velocity, or just uses this convention.

- `flow_matching_loss(velocity_fn, x0_noise, x1_data, t)`: mean squared error to x1 - x0.
- `logit_normal_t`: t = sigmoid(N(m, s)), the SD3 / xAR training distribution.
- `euler_sample(velocity_fn, noise, num_steps, cfg_scale=...)`: uniform Euler steps, with
  classifier-free guidance over [conditional; null] rows run as one batch.
- `FlowHead`: MAR's small MLP with adaLN (Li et al. 2024, arXiv 2406.11838, "SimpleMLPAdaLN")
  predicting a velocity for one continuous vector (a token, an entity, a channel group) from
  x_t, t and a condition vector z (the backbone's output at that position): the per-token /
  per-entity continuous head of MAR, xAR and TokenBridge's continuous arm.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.generate import guided_logits
from tokenlab.nn.layers import DenseGeneral
from tokenlab.nn.vision import AdaLNModulation, TimestepEmbedder, modulate

# (x_t (B, ...), t (B,)) -> velocity (B, ...)
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
  """t (B,) -> (B, 1, ..., 1) against x (B, ...)."""
  return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim)).astype(x.dtype)


def interpolate(x0_noise: jax.Array, x1_data: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 - t) x0 + t x1; x0, x1 (B, ...), t (B,)."""
  t = _bcast(t, x1_data)
  return (1.0 - t) * x0_noise + t * x1_data


def flow_matching_loss(velocity_fn: VelocityFn, x0_noise: jax.Array, x1_data: jax.Array,
                       t: jax.Array, *, weights: jax.Array | None = None) -> jax.Array:
  """Rectified-flow loss: mean over elements of ||velocity_fn(x_t, t) - (x1 - x0)||^2.

  Args:
    velocity_fn: (x_t (B, ...), t (B,)) -> (B, ...).
    x0_noise, x1_data: (B, ...), the noise and data ends of each path.
    t: (B,) in [0, 1] (e.g. `logit_normal_t` or uniform).
    weights: optional (B, ...) broadcastable element weights (e.g. a mask of real tokens);
      the loss is then sum(w * err) / sum(w * 1) over all elements.
  Returns:
    scalar float32.
  """
  target = (x1_data - x0_noise).astype(jnp.float32)
  err = jnp.square(velocity_fn(interpolate(x0_noise, x1_data, t), t).astype(jnp.float32)
                   - target)
  if weights is None:
    return jnp.mean(err)
  w = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), err.shape)
  return jnp.sum(w * err) / jnp.maximum(jnp.sum(w), 1e-9)


def logit_normal_t(rng: jax.Array, shape: tuple[int, ...], mean: float = 0.0,
                   std: float = 1.0) -> jax.Array:
  """t = sigmoid(mean + std * N(0, 1)) of `shape`: training times concentrated mid-path."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape))


def euler_sample(velocity_fn: VelocityFn, noise: jax.Array, num_steps: int, *,
                 cfg_scale: float | jax.Array | None = None,
                 return_trajectory: bool = False):
  """Integrates dx/dt = v(x, t) from t = 0 (noise) to 1 with `num_steps` uniform Euler steps.

  Args:
    velocity_fn: (x (rows, ...), t (rows,)) -> (rows, ...). With `cfg_scale` it is called on
      2B rows, the batch twice, and must return [conditional; null] velocities (e.g. it
      closes over labels concatenated with null labels); the step uses
      null + s (cond - null), so s = 1 is the conditional flow and s = 0 the unconditional.
    noise: (B, ...) the samples at t = 0.
    num_steps: Euler steps (static).
    return_trajectory: also return the states (num_steps + 1, B, ...) from noise to sample.
  Returns:
    (B, ...) samples at t = 1 (and the trajectory).
  """
  batch = noise.shape[0]
  dt = 1.0 / num_steps

  def velocity(x, t):
    ts = jnp.full((batch,), t, jnp.float32)
    if cfg_scale is None:
      return velocity_fn(x, ts)
    both = velocity_fn(jnp.concatenate([x, x], 0), jnp.concatenate([ts, ts], 0))
    return guided_logits(both, cfg_scale).astype(x.dtype)

  def step(x, i):
    x = x + dt * velocity(x, i * dt)
    return x, x

  x, path = jax.lax.scan(step, noise, jnp.arange(num_steps))
  if return_trajectory:
    return x, jnp.concatenate([noise[None], path], 0)
  return x


class FlowHead(nn.Module):
  """Velocity of a continuous vector given its condition (MAR's MLP with adaLN).

  (x_t (..., D), t (...), z (..., Dz)) -> velocity (..., D); every leading position is an
  independent sample (B tokens, B x N entities, ...). c = TimestepEmbedder(t) + Dense(z);
  `depth` residual blocks x + gate * MLP(modulate(LN(x), shift, scale)) with shift, scale,
  gate from c (adaLN-Zero: each block starts as the identity), then a modulated LN and a
  zero-initialised output projection (the head predicts 0 at init).
  """
  width: int = 256
  depth: int = 3
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
    lead, dim = x.shape[:-1], x.shape[-1]
    # One sample per row, shaped (M, 1, width) for the shared (B, L, D) `modulate`.
    xs = x.reshape(-1, 1, dim)
    h = DenseGeneral((self.width,), (None, "mlp"), use_bias=True,
                     param_dtype=self.param_dtype, name="in_proj")(xs)
    c = TimestepEmbedder(self.width, param_dtype=self.param_dtype, name="t_embed")(
        jnp.broadcast_to(t, lead).reshape(-1))
    c = c + DenseGeneral((self.width,), (None, "mlp"), use_bias=True,
                         param_dtype=self.param_dtype, name="z_proj")(
                             z.reshape(-1, z.shape[-1]))
    norm = lambda v: nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False)(v)
    for i in range(self.depth):
      mod = AdaLNModulation(3, self.width, param_dtype=self.param_dtype,
                            name=f"block_{i}_adaln")(c)
      u = modulate(norm(h), mod[:, 0], mod[:, 1])
      u = DenseGeneral((self.width,), ("mlp", None), use_bias=True,
                       param_dtype=self.param_dtype, name=f"block_{i}_fc1")(u)
      u = DenseGeneral((self.width,), (None, "mlp"), use_bias=True,
                       param_dtype=self.param_dtype, name=f"block_{i}_fc2")(jax.nn.silu(u))
      h = h + mod[:, 2][:, None, :] * u
    mod = AdaLNModulation(2, self.width, param_dtype=self.param_dtype, name="final_adaln")(c)
    h = modulate(norm(h), mod[:, 0], mod[:, 1])
    v = DenseGeneral((dim,), ("mlp", None), use_bias=True, kernel_init=nn.initializers.zeros,
                     param_dtype=self.param_dtype, name="out_proj")(h)
    return v.reshape(*lead, dim)
