"""Helpers shared by the GPU and TPU Pallas kernels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def call(kernel: Callable[..., None], *, args: Sequence[jax.Array], out_shape: Sequence[Any],
         out_specs: Sequence[Any], poison: bool, **kwargs) -> list[jax.Array]:
  """pl.pallas_call(kernel)(*args), optionally with NaN-poisoned output buffers.

  With `poison`, every output starts as a NaN-filled buffer aliased into the call, so any
  element the kernel forgets to write stays NaN and a test sees it. The kernel keeps its
  signature (inputs, then outputs): the aliased inputs are dropped before it is called.
  """
  n_in = len(args)
  if poison:
    poisoned = [jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shape]
    in_specs = list(kwargs.pop("in_specs")) + list(out_specs)
    aliases = {n_in + i: i for i in range(len(out_shape))}

    def wrapped(*refs):
      kernel(*refs[:n_in], *refs[n_in + len(out_shape):])

    return pl.pallas_call(wrapped, out_shape=list(out_shape), out_specs=list(out_specs),
                          in_specs=in_specs, input_output_aliases=aliases,
                          **kwargs)(*args, *poisoned)
  return pl.pallas_call(kernel, out_shape=list(out_shape), out_specs=list(out_specs),
                        **kwargs)(*args)


def pad_axis(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  """Pads axis of x at the end up to size."""
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _precision(a: jax.Array):
  # float32 operands get full-precision products (GPU default would be TF32, TPU default
  # bf16 passes), so a device keeps the float32 accuracy the tests demand; bf16 stays native.
  return jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None


def dot_t(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b.T with float32 accumulation; a (m, k), b (n, k) -> (m, n)."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_precision(a),
                             preferred_element_type=jnp.float32)


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ b with float32 accumulation; a (m, k), b (k, n) -> (m, n)."""
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_precision(a),
                             preferred_element_type=jnp.float32)
