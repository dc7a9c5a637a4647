"""Train state and its initialisation *already sharded* (no full copy on any one device)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from tokenlab.train import partitioning


@dataclasses.dataclass(frozen=True)
class TrainState:
  """step, params, opt_state, and a stateful method's non-parameter state `model_state`
  ({collection: tree}; None for a stateless method, see tokenlab/method.py).

  A pytree whose children are step, params, opt_state, plus model_state only when it is not
  None: a stateless run's state (and so its checkpoints) has exactly the three items it had
  before model_state existed, so older workdirs resume unchanged.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any = None

  def replace(self, **changes: Any) -> "TrainState":
    return dataclasses.replace(self, **changes)


_FIELDS = ("step", "params", "opt_state")


def _flatten(state: TrainState):
  names = _FIELDS + (("model_state",) if state.model_state is not None else ())
  return ([(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names],
          state.model_state is not None)


def _unflatten(has_model_state: bool, children) -> TrainState:
  return TrainState(*children) if has_model_state else TrainState(*children, model_state=None)


jax.tree_util.register_pytree_with_keys(TrainState, _flatten, _unflatten)


class ParamsAndState(NamedTuple):
  """What an init function gives a stateful method: boxed params and {collection: tree}."""
  params: Any
  state: Any


def method_init_fn(method: Any, example: dict[str, Any]) -> Callable[[jax.Array], Any]:
  """rng -> the method's boxed params (stateless) or ParamsAndState (stateful), for a batch of
  the shapes of `example` (arrays or ShapeDtypeStructs): the `init_params` argument below."""
  from tokenlab.method import init_variables

  def init(rng):
    batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in example.items()}
    params, state = init_variables(method, rng, batch)
    return params if state is None else ParamsAndState(params, state)
  return init


def _cast_floats(tree: Any, dtype) -> Any:
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def _make_init_fn(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                  param_dtype) -> Callable[[jax.Array], TrainState]:
  def init_fn(rng):
    out = init_params(rng)
    params, model_state = out if isinstance(out, ParamsAndState) else (out, None)
    # tree.map reaches through the logical-partitioning boxes and keeps them. The model
    # state keeps its own dtypes (an EMA in bfloat16 would lose its small updates).
    params = _cast_floats(params, param_dtype)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=model_state)
  return init_fn


def state_layout(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 mesh: Mesh, rules, param_dtype) -> tuple[TrainState, Any]:
  """(abstract unboxed state, NamedShardings) without allocating anything.

  The abstract (boxed) state gives logical axes; the rules turn them into shardings.
  """
  # An abstract key, made outside the mesh: a concrete one would be placed on the mesh's
  # devices, which a compile-only TPU topology (`tokenlab plan --topology`) cannot hold.
  key = jax.eval_shape(lambda: jax.random.key(0))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(_make_init_fn(init_params, tx, param_dtype), key)
    shardings = partitioning.tree_shardings(boxed, mesh, rules)
  return partitioning.strip_boxes(boxed), shardings


def init_sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       rng: jax.Array, mesh: Mesh, rules, param_dtype,
                       shardings: Any = None) -> tuple[TrainState, Any]:
  """Initialises parameters and optimizer state directly into their shardings: one jit with
  out_shardings materialises every array where it belongs, never whole on one device.

  `init_params(rng)` returns logically boxed parameters (e.g. a method's init on an example),
  or a ParamsAndState (`method_init_fn` makes either). `shardings`: `state_layout`'s, when
  the caller has them (tracing the init once more costs about a second for a mid-size model).
  Returns (state, state_shardings), both unboxed.
  """
  if shardings is None:
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
