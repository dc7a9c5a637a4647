"""Helpers shared by the methods' tests."""

import jax
import numpy as np


def random_params(method, batch, seed: int = 0, scale: float = 0.3):
  """Random float32 numpy parameters of the model's shapes for `batch`, unboxed.

  Uses jax.eval_shape on `method.init` (nothing compiled), which keeps tests fast on a busy CPU.
  """
  shapes = jax.eval_shape(method.init, jax.random.key(0), batch)
  shapes = jax.tree.map(lambda b: getattr(b, "value", b), shapes,
                        is_leaf=lambda b: hasattr(b, "value"))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(np.float32), shapes)
