"""Explicit data parallelism (the pmap style) written with `shard_map` + `psum`.

The jit-sharded trainer (`train/step.py` + `train/loop.py`) lets XLA's SPMD partitioner place
collectives from sharding annotations: with FSDP it all-gathers parameters per layer and
reduce-scatters gradients. This module is the other classic design, written by hand:

* parameters and optimizer state are replicated on every device (P()),
* each device computes the loss and gradients of its shard of the batch (P('data')),
* gradients are averaged with one `psum` per step, weighted by each shard's loss count so the
  result equals the gradient of the global masked mean exactly,
* every device applies the same optimizer update to its replica.

`tokenlab scale --sweep mode=fsdp,dp_shard_map` compares the two on the same model, optimizer
and data. Gradient accumulation and the non-finite `skip` policy are left to the main trainer.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tokenlab.errors import ConfigError
from tokenlab.method import Average, as_average
from tokenlab.train.state import TrainState, init_sharded_state, method_init_fn
from tokenlab.train.step import make_loss_fn

AXIS = "data"


def dp_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh ('data',) over all (or the given) devices."""
  devices = list(devices if devices is not None else jax.devices())
  return Mesh(np.asarray(devices), (AXIS,))


def init_replicated_state(method, tx: optax.GradientTransformation, example: dict,
                          rng: jax.Array, mesh: Mesh, param_dtype) -> TrainState:
  """Initialises parameters + optimizer state replicated on every device of `mesh`.

  `example` is a batch (or ShapeDtypeStructs) giving the input shapes. The rules map only
  `batch`; every parameter axis is unmapped, i.e. replicated.
  """
  if method.state_collections:
    raise ConfigError(f"{type(method).__name__} carries non-parameter state "
                      f"{method.state_collections}; the shard_map data-parallel step supports "
                      "stateless methods only: use the main trainer")
  state, _ = init_sharded_state(method_init_fn(method, example), tx, rng, mesh,
                                (("batch", AXIS),), param_dtype)
  return state


def make_dp_train_step(method, tx: optax.GradientTransformation, mesh: Mesh, *,
                       compute_dtype, schedule: optax.Schedule | None = None) -> Callable:
  """Returns a jitted step(state, batch, rng) -> (state, metrics), state donated.

  state: a replicated TrainState; batch: arrays of shape (global_batch, ...) sharded over
  'data' on their leading axis; metrics: dict of replicated `Average`s (as the main trainer).
  """
  grad_fn = jax.value_and_grad(make_loss_fn(method, compute_dtype), has_aux=True)

  def local_step(state: TrainState, batch: dict, rng: jax.Array):
    # Same per-step key as the jit trainer; each shard then draws its own (e.g. dropout).
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    (loss, metrics), grads = grad_fn(state.params, batch, rng)
    # A shard's loss is its own masked mean; weighting by its count makes the average over
    # shards equal the global masked mean (and its gradient), whatever the masks.
    weight = metrics["loss"].count if isinstance(metrics.get("loss"), Average) else 1.0
    weight = jnp.asarray(weight, jnp.float32)
    total_weight = jax.lax.psum(weight, AXIS)
    grads = jax.tree.map(lambda g: jax.lax.psum(g * weight, AXIS) / total_weight, grads)
    loss = jax.lax.psum(loss * weight, AXIS) / total_weight
    metrics = jax.tree.map(lambda x: jax.lax.psum(x, AXIS), metrics)

    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = as_average(grad_norm)
    metrics["step_loss"] = as_average(loss)
    if schedule is not None:
      metrics["lr"] = as_average(schedule(state.step))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  # check_vma=False gives pmap semantics: gradients of the replicated parameters stay
  # per-device, so the one explicit psum above is the only reduction. (With the check on,
  # jax would already sum them when transposing the implicit broadcast of the parameters.)
  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=(0,))


def _median(timings: list[float]) -> float:
  return float(np.median(timings)) if timings else float("nan")


def train_dp(config, *, steps: int, train_iter: Iterator[dict[str, np.ndarray]],
             devices: list | None = None, log: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
  """Runs `steps` explicit-DP steps of `config`'s method on batches from `train_iter`.

  Returns {'losses', 'step_time_sec' (median over steps after the first), 'step_time_best_sec'
  (their minimum), 'tokens_per_sec',
  'mfu', 'compile_sec', 'memory' (XLA memory analysis, bytes per device), 'num_params'}.
  """
  from tokenlab import registry
  from tokenlab.train.metrics import peak_flops, reduce_metrics
  from tokenlab.train.optimizer import make_optimizer, make_schedule

  tc = config.train
  if tc.grad_accum_steps != 1:
    raise ConfigError("the shard_map data-parallel step has no gradient accumulation; set "
                      "--config.train.grad_accum_steps=1 or use the main trainer")
  mesh = dp_mesh(devices)
  n = mesh.size
  if tc.batch_size % n:
    raise ConfigError(f"config.train.batch_size={tc.batch_size} is not divisible by the "
                      f"{n} data-parallel devices; use a multiple of {n}")
  method = registry.build_method(config.model)
  tx = make_optimizer(config.optimizer, tc.steps, tc.clip_grad_norm, tc.get("freeze", ""))
  schedule = make_schedule(config.optimizer, tc.steps)
  first = next(train_iter)
  rng = jax.random.key(config.seed)
  init_rng, step_rng, _ = jax.random.split(rng, 3)
  example = {k: jax.ShapeDtypeStruct((tc.batch_size // n, *np.shape(v)[1:]),
                                     np.asarray(v).dtype) for k, v in first.items()}
  state = init_replicated_state(method, tx, example, init_rng, mesh, jnp.dtype(tc.param_dtype))
  batch_sh = NamedSharding(mesh, P(AXIS))
  to_global = lambda b: {k: jax.device_put(np.asarray(v), batch_sh) for k, v in b.items()}
  step_fn = make_dp_train_step(method, tx, mesh, compute_dtype=jnp.dtype(tc.compute_dtype),
                               schedule=schedule)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, to_global(first), step_rng).compile()
  compile_sec = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  memory = {}
  if mem is not None:
    memory = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
              for k in ("argument", "output", "alias", "temp")}
    memory["peak"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]

  losses, timings = [], []
  batch = first
  for i in range(steps):
    if i:
      batch = next(train_iter)
    global_batch = to_global(batch)
    t = time.perf_counter()
    state, metrics = compiled(state, global_batch, step_rng)
    jax.block_until_ready(state)
    timings.append(time.perf_counter() - t)
    losses.append(reduce_metrics([metrics])["loss"])
    if log is not None:
      log(f"dp_shard_map step {i + 1}: loss {losses[-1]:.4f}, {timings[-1] * 1e3:.1f} ms")
  step_time = _median(timings[1:] or timings)
  seq_len = int(np.shape(first["inputs"])[1]) if "inputs" in first else 1
  tokens = tc.batch_size * seq_len
  flops_token = method.flops_per_token(seq_len) if "inputs" in first else None
  peak, _ = peak_flops()
  return {
      "losses": losses, "step_time_sec": step_time,
      "step_time_best_sec": float(min(timings[1:] or timings)),
      "tokens_per_sec": tokens / step_time,
      "mfu": (flops_token * tokens / step_time / peak) if flops_token else float("nan"),
      "compile_sec": compile_sec, "memory": memory,
      "num_params": sum(int(x.size) for x in jax.tree.leaves(state.params)),
  }
