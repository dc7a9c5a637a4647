"""Train state and its initialisation *already sharded* (no full copy on any one device)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from tokenlab.train import partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _cast_floats(tree: Any, dtype) -> Any:
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def _make_init_fn(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                  param_dtype) -> Callable[[jax.Array], TrainState]:
  def init_fn(rng):
    # tree.map reaches through the logical-partitioning boxes and keeps them.
    params = _cast_floats(init_params(rng), param_dtype)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init_fn


def state_layout(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 mesh: Mesh, rules, param_dtype) -> tuple[TrainState, Any]:
  """(abstract unboxed state, NamedShardings) without allocating anything.

  The abstract (boxed) state gives logical axes; the rules turn them into shardings.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(_make_init_fn(init_params, tx, param_dtype), jax.random.key(0))
    shardings = partitioning.tree_shardings(boxed, mesh, rules)
  return partitioning.strip_boxes(boxed), shardings


def init_sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       rng: jax.Array, mesh: Mesh, rules, param_dtype) -> tuple[TrainState, Any]:
  """Initialises parameters and optimizer state directly into their shardings: one jit with
  out_shardings materialises every array where it belongs, never whole on one device.

  `init_params(rng)` returns logically boxed parameters (e.g. a method's init on an example).
  Returns (state, state_shardings), both unboxed.
  """
  _, shardings = state_layout(init_params, tx, mesh, rules, param_dtype)
  init_fn = _make_init_fn(init_params, tx, param_dtype)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(shardings: Any, state_like: Any) -> Any:
  """ShapeDtypeStructs carrying shardings, the target orbax restores into."""
  # optax's MaskedNode (no state for frozen parameters) has no leaves, while the sharding
  # tree holds one sharding there (a valid jit prefix): keep the node.
  masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(lambda x, s: x if masked(x) else
                      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_like, shardings, is_leaf=masked)


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
