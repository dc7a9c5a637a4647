"""One training step: mixed precision, gradient accumulation, clipping, non-finite policy.

These live here, not in methods: a method only supplies `loss(params, batch, rng)` (a stateful
method `loss(params, batch, rng, state) -> (loss, metrics, new_state)`, see tokenlab/method.py:
its state is threaded through the micro-batches in order and never differentiated).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tokenlab.method import Average, as_average, call_eval_metrics, call_loss
from tokenlab.train.state import TrainState


def cast_floats(tree: Any, dtype) -> Any:
  """Casts floating leaves of `tree` to `dtype` (integers, e.g. token ids, stay as they are)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
      tree)


def _averages(metrics: dict) -> dict[str, Average]:
  return {k: as_average(v) for k, v in metrics.items()}


def make_loss_fn(method, compute_dtype) -> Callable:
  """loss(params, batch, rng) computed in `compute_dtype`, returned in float32.

  Parameters stay in their (master) dtype in the state; the cast here is what makes bfloat16
  compute with float32 master weights.
  """
  stateful = make_stateful_loss_fn(method, compute_dtype)

  def loss_fn(params, batch, rng):
    loss, (metrics, _) = stateful(params, batch, rng, None)
    return loss, metrics
  return loss_fn


def make_stateful_loss_fn(method, compute_dtype) -> Callable:
  """loss(params, batch, rng, model_state) -> (loss, (metrics, new model_state)): the shape
  `jax.value_and_grad(..., has_aux=True)` wants. The model state is not cast (it keeps its
  dtypes, and the new state is cast back to them so the step's output matches its input)."""
  def loss_fn(params, batch, rng, model_state):
    loss, metrics, new_state = call_loss(method, cast_floats(params, compute_dtype), batch, rng,
                                         model_state)
    if model_state is not None:
      new_state = jax.tree.map(lambda n, o: jnp.asarray(n, o.dtype), new_state, model_state)
    return loss.astype(jnp.float32), (_averages(metrics), new_state)
  return loss_fn


def make_train_step(method, tx: optax.GradientTransformation, *, compute_dtype,
                    grad_accum_steps: int = 1, on_nonfinite: str = "halt",
                    schedule: optax.Schedule | None = None,
                    micro_batch_constraint: Callable[[Any], Any] | None = None) -> Callable:
  """Returns step(state, batch, rng) -> (state, metrics); jit it with shardings.

  With grad_accum_steps = k the global batch is split into k micro-batches that each spread
  over every data-parallel device (rows i, i+k, i+2k, ... form micro-batch i), gradients are
  averaged, and one optimizer update is applied.
  on_nonfinite: 'halt' applies the update and lets the loop stop on a non-finite loss;
  'skip' leaves the state unchanged on a non-finite loss or gradient and counts the skip.
  """
  grad_fn = jax.value_and_grad(make_stateful_loss_fn(method, compute_dtype), has_aux=True)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum_steps == 1:
      (loss, (metrics, model_state)), grads = grad_fn(state.params, batch, rng,
                                                       state.model_state)
    else:
      def split(x):
        x = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
      micro = jax.tree.map(split, batch)

      # The model state is carried: micro-batch i sees the state micro-batch i-1 left (the
      # only order-free alternative, merging k updated states, has no general definition).
      def body(carry, inputs):
        grads_acc, loss_acc, metrics_acc, model_state = carry
        i, mb = inputs
        if micro_batch_constraint is not None:
          mb = micro_batch_constraint(mb)
        (loss, (metrics, model_state)), grads = grad_fn(
            state.params, mb, jax.random.fold_in(rng, i), model_state)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics)
        return (grads_acc, loss_acc + loss, metrics_acc, model_state), None

      mb0 = jax.tree.map(lambda x: x[0], micro)
      _, (metrics_shape, _) = jax.eval_shape(grad_fn, state.params, mb0, rng,
                                             state.model_state)[0]
      zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      init = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
              zeros(metrics_shape), state.model_state)
      (grads, loss, metrics, model_state), _ = jax.lax.scan(
          body, init, (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
      loss = loss / grad_accum_steps

    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           model_state=model_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if on_nonfinite == "skip":
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      new_state = new_state.replace(step=state.step + 1)
      metrics["skipped_steps"] = Average.of(1.0 - finite.astype(jnp.float32), 1.0)
    metrics["grad_norm"] = as_average(grad_norm)
    metrics["step_loss"] = as_average(loss)
    if schedule is not None:
      metrics["lr"] = as_average(schedule(state.step))
    return new_state, metrics

  return step


def make_eval_step(method, compute_dtype) -> Callable:
  """eval(params, batch, rng, model_state=None) -> metrics (dict of Average)."""
  def eval_step(params, batch, rng, model_state=None):
    return _averages(call_eval_metrics(method, cast_floats(params, compute_dtype), batch, rng,
                                       model_state))
  return eval_step
