"""One training step: mixed precision, gradient accumulation, clipping, non-finite policy.

These live here, not in methods: a method only supplies `loss(params, batch, rng)`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tokenlab.method import Average, as_average
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
  def loss_fn(params, batch, rng):
    loss, metrics = method.loss(cast_floats(params, compute_dtype), batch, rng)
    return loss.astype(jnp.float32), _averages(metrics)
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
  grad_fn = jax.value_and_grad(make_loss_fn(method, compute_dtype), has_aux=True)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum_steps == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, rng)
    else:
      def split(x):
        x = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
      micro = jax.tree.map(split, batch)

      def body(carry, inputs):
        grads_acc, loss_acc, metrics_acc = carry
        i, mb = inputs
        if micro_batch_constraint is not None:
          mb = micro_batch_constraint(mb)
        (loss, metrics), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        metrics_acc = jax.tree.map(jnp.add, metrics_acc, metrics)
        return (grads_acc, loss_acc + loss, metrics_acc), None

      mb0 = jax.tree.map(lambda x: x[0], micro)
      _, metrics_shape = jax.eval_shape(grad_fn, state.params, mb0, rng)[0]
      zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      init = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
              zeros(metrics_shape))
      (grads, loss, metrics), _ = jax.lax.scan(
          body, init, (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
      loss = loss / grad_accum_steps

    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
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
  """eval(params, batch, rng) -> metrics (dict of Average)."""
  def eval_step(params, batch, rng):
    return _averages(method.eval_metrics(cast_floats(params, compute_dtype), batch, rng))
  return eval_step
