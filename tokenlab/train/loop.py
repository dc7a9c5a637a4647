"""The training loop: one function that runs any experiment, from a laptop to a pod slice.

    train(config, workdir)

1. validates the whole config (one pass, before anything is built or written) and checks
   the workdir (a different config there is refused, naming the keys that differ),
2. builds the mesh, the method and the data pipeline,
3. opens the workdir (`workdir.Workdir`: lock, writability), initialises the state already
   sharded, or restores state + data iterator from the newest checkpoint in
   WORKDIR/checkpoints that restores (damaged ones are walked past and moved aside),
4. runs jitted steps with in/out shardings and donated state, logging to metrics.jsonl /
   TensorBoard with a progress bar (loss, tokens/s, MFU), evaluating and checkpointing
   periodically; SIGTERM saves a checkpoint at the next step boundary and returns.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from tokenlab import config as config_lib
from tokenlab import registry
from tokenlab.errors import ConfigError, TokenlabError
from tokenlab.train import partitioning
from tokenlab.train.checkpoint import Checkpointer
from tokenlab.train.init_from import (check_freeze, checkpoint_dir, describe_overlay,
                                     load_params, overlay_params, param_path)
from tokenlab.train.mesh import make_mesh
from tokenlab.train.metrics import peak_flops, read_metrics, reduce_metrics
from tokenlab.train.optimizer import make_optimizer, make_schedule
from tokenlab.train.progress import Progress
from tokenlab.train.state import (abstract_state, count_params, init_sharded_state,
                                  method_init_fn, state_layout)
from tokenlab.train.step import make_eval_step, make_train_step
from tokenlab.train.workdir import RESUMABLE_CHANGES, Workdir  # noqa: F401 (re-exported)

DEFAULT_MAX_SKIPPED_FRACTION = 0.1

IteratorFn = Callable[..., Iterator[dict[str, np.ndarray]]]


def check_workdir(config: ConfigDict, workdir: str) -> None:
  """Refuses a workdir that cannot take this run; reads, never writes (`Workdir.check`)."""
  Workdir(workdir).check(config)


def write_config(config: ConfigDict, workdir: str) -> None:
  """Writes WORKDIR/config.json atomically (`Workdir.write_config`)."""
  Workdir(workdir).write_config(config)


def validate_train_config(config: ConfigDict) -> None:
  """Every check of the training keys that needs no data or devices, before anything runs:
  counts, learning rate, dtypes, optimizer and schedule names, init_from. Raises ConfigError
  naming the key and the fix."""
  tc, ck = config.train, config.checkpoint
  positive = {"train.steps": tc.steps, "train.batch_size": tc.batch_size,
              "train.log_every": tc.log_every, "train.grad_accum_steps": tc.grad_accum_steps,
              "checkpoint.every_steps": ck.every_steps, "checkpoint.keep": ck.keep}
  for key, value in positive.items():
    if not isinstance(value, int) or value < 1:
      why = (" (it is how many checkpoints are kept; 0 would delete every checkpoint of this "
             "workdir)" if key == "checkpoint.keep" else "")
      raise ConfigError(f"config.{key}={value} must be a positive integer{why}")
  for key, value in {"train.eval_every": tc.eval_every, "train.eval_batches": tc.eval_batches
                     }.items():
    if not isinstance(value, int) or value < 0:
      raise ConfigError(f"config.{key}={value} must be 0 (never / all) or a positive integer")
  if not config.optimizer.lr >= 0:
    raise ConfigError(f"config.optimizer.lr={config.optimizer.lr} must be >= 0")
  for key in ("compute_dtype", "param_dtype"):
    name = tc.get(key)
    try:
      kind = jnp.dtype(name).kind
    except TypeError:
      kind = None
    if kind != "f":
      raise ConfigError(f"config.train.{key}='{name}' is not a floating dtype; use float32 or "
                        f"bfloat16")
  if tc.on_nonfinite not in ("halt", "skip"):
    raise ConfigError(f"config.train.on_nonfinite must be 'halt' or 'skip', got "
                      f"'{tc.on_nonfinite}'")
  fraction = tc.get("max_skipped_fraction", DEFAULT_MAX_SKIPPED_FRACTION)
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
      0 <= fraction <= 1):
    raise ConfigError(f"config.train.max_skipped_fraction={fraction} must be a fraction in "
                      f"[0, 1] (the share of steps on_nonfinite=skip may drop before the run "
                      f"fails)")
  make_schedule(config.optimizer, tc.steps)
  make_optimizer(config.optimizer, tc.steps, tc.clip_grad_norm, "")
  source = tc.get("init_from")
  if source and not any(n.isdigit() for n in os.listdir(checkpoint_dir(source))):  # raises
    raise ConfigError(f"config.train.init_from='{source}' holds no finished checkpoint yet; "
                      f"train it first, or fix the path")


def validate_data(config: ConfigDict) -> None:
  """The data checks that need no devices, before anything is written: a data_dir that is a
  file (or under one), and a model vocabulary smaller than the tokenizer's (its ids would
  index past the embedding and show up later as a non-finite loss)."""
  data = config.get("data") or ConfigDict()
  data_dir = data.get("data_dir", "") or ""
  if data_dir and "://" not in data_dir:
    path = os.path.abspath(os.path.expanduser(data_dir))
    parent = path
    while parent and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
      raise ConfigError(f"config.data.data_dir='{data_dir}': {parent} is a file, not a "
                        f"directory; point it at a directory (built data is kept there) or "
                        f"leave it empty for the default")
  model_vocab = config.model.get("vocab_size")
  if (isinstance(model_vocab, int) and data.get("name") not in ("", None, METHOD_DATA)
      and data.get("tokenizer")):
    from tokenlab import data as data_lib
    data_lib.validate_data_config(data)
    wanted = data.get("vocab_size")
    if isinstance(wanted, int) and model_vocab >= wanted:
      return   # a tokenizer never has more ids than asked for: nothing to build
    tokens = data_lib.vocab_size(data)
    if model_vocab < tokens:
      raise ConfigError(f"config.model.vocab_size={model_vocab} is smaller than the "
                        f"vocabulary of config.data.tokenizer='{data.tokenizer}' ({tokens} "
                        f"ids): token ids would index past the embedding; set "
                        f"--config.model.vocab_size={tokens}")


@contextlib.contextmanager
def data_errors(data_cfg: ConfigDict | None) -> Iterator[None]:
  """Turns a failure to read the built data of `data_cfg` (garbled or truncated files in the
  data dir) into one TokenlabError naming the data dir and the fix; None: no translation."""
  try:
    yield
  except (TokenlabError, KeyboardInterrupt):
    raise
  except Exception as e:  # noqa: BLE001 (any failure to read the data files is the same fix)
    if data_cfg is None:
      raise
    from tokenlab.data import storage
    where = storage.resolve_data_dir(data_cfg.get("data_dir", "") or "")
    text = (str(e).strip().splitlines() or [""])[0][:160]
    raise TokenlabError(f"reading dataset '{data_cfg.get('name')}' from {where} failed "
                        f"({type(e).__name__}: {text}); its files may be damaged: for an embedded "
                        f"dataset delete {where}/tokenlab_{data_cfg.get('name')} (it is "
                        f"rebuilt), or point config.data.data_dir elsewhere") from e


# `config.data.name = METHOD_DATA`: the method's module generates its own data (synthetic
# tasks) through `iterator_fns(config) -> (train_fn, eval_fn)`, each fn(batch_size, seed).
METHOD_DATA = "method"


def method_iterator_fns(config: ConfigDict) -> tuple[IteratorFn, IteratorFn]:
  """(train_fn, eval_fn) of the method module's in-code data (config.data.name='method')."""
  import importlib
  module = importlib.import_module(registry.get_method_class(config.model.name).__module__)
  if not hasattr(module, "iterator_fns"):
    raise ConfigError(f"config.data.name='{METHOD_DATA}' but {module.__name__} defines no "
                      f"iterator_fns(config); name a dataset in config.data.name instead")
  return module.iterator_fns(config)


def process_seed(seed: int, process_index: int) -> int:
  """A seed of process `process_index`'s own, derived from the run's seed."""
  return int(np.random.SeedSequence((seed, process_index)).generate_state(1)[0] & 0x7FFFFFFF)


def _default_iterators(config: ConfigDict) -> tuple[IteratorFn, IteratorFn]:
  if config.data.name == METHOD_DATA:
    train_fn, eval_fn = method_iterator_fns(config)
    if jax.process_count() == 1:
      return train_fn, eval_fn
    index = jax.process_index()
    # In-code streams are pure functions of (seed, step): with several processes each one
    # draws its own stream from a seed of its own. Evaluation streams stay identical on every
    # process, so eval metrics are those of one process's eval batches (computed redundantly).
    return (lambda batch_size, seed: train_fn(batch_size, process_seed(seed, index)),
            eval_fn)
  from tokenlab import data as data_lib
  data_lib.validate_data_config(config.data)

  def train_fn(batch_size, seed):
    # The elastic stream: global batches depend on (seed, step, shards), not on the number
    # of processes, and checkpoints restore on another process count (data/elastic.py).
    from tokenlab.data import elastic  # pylint: disable=g-import-not-at-top

    def shard(k: int, num_shards: int, rows: int):
      # config.data.worker_count is the process's budget of grain workers, split among the
      # shards it runs (each shard's pipeline would otherwise start that many).
      data_cfg = config.data.to_dict()
      if data_cfg.get("worker_count", 0) > 0:
        data_cfg["worker_count"] = max(
            1, data_cfg["worker_count"] * jax.process_count() // num_shards)
      return data_lib.make_iterator(data_cfg, split="train", batch_size=rows,
                                    seed=elastic.shard_seed(seed, k), process_index=k,
                                    process_count=num_shards, shuffle=True)

    return elastic.sharded_iterator(
        shard, global_batch=batch_size * jax.process_count(),
        requested_shards=config.data.get("shards", 0), process_index=jax.process_index(),
        process_count=jax.process_count())

  def eval_fn(batch_size, seed):
    return data_lib.make_iterator(config.data, split="validation", batch_size=batch_size,
                                  seed=seed, process_index=jax.process_index(),
                                  process_count=jax.process_count(), shuffle=False,
                                  num_epochs=1)
  return train_fn, eval_fn


class _Preemption:
  """Turns SIGTERM (what TPU VMs and SLURM send) into a stop at a step boundary.

  One process: a signal handler sets a flag. Several processes: JAX's preemption service
  (started by jax.distributed.initialize) makes every process see the notice at the *same*
  step, so all of them save the same step and exit together.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if not self._multi:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # Not the main thread (e.g. some test runners): no handler.
        self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def check(self, step: int) -> bool:
    if self._multi and not self.requested:
      from jax.experimental import multihost_utils
      try:
        self.requested = bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # Preemption service not running (e.g. explicit coordinator).
        pass
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def validate_batch(config: ConfigDict, mesh, rules) -> tuple[int, int]:
  """Returns (per-process batch, micro-batch) or raises ConfigError naming the fix."""
  batch = config.train.batch_size
  accum = config.train.grad_accum_steps
  dp = partitioning.data_parallel_size(mesh, rules)
  if accum < 1 or batch % accum:
    raise ConfigError(f"config.train.batch_size={batch} is not divisible by "
                      f"config.train.grad_accum_steps={accum}; choose a multiple of {accum}")
  micro = batch // accum
  if micro % dp:
    axes = partitioning.batch_axes(rules)
    raise ConfigError(f"config.train.batch_size={batch} (micro-batch {micro}) is not divisible "
                      f"by the data-parallel mesh axes {axes} of size {dp}; use a multiple of "
                      f"{dp * accum} for train.batch_size or change config.mesh")
  if batch % jax.process_count():
    raise ConfigError(f"config.train.batch_size={batch} is not divisible by the "
                      f"{jax.process_count()} processes")
  return batch // jax.process_count(), micro


def jit_train_step(config: ConfigDict, method, tx, schedule, mesh, rules, state_shardings,
                   batch_shardings) -> Callable:
  """The train step jitted with in/out shardings and donated state.

  Shared by the loop and `tokenlab plan`, so what plan compiles is what training runs.
  """
  tc = config.train
  micro_constraint = lambda mb: {k: jax.lax.with_sharding_constraint(
      x, partitioning.batch_sharding(mesh, rules, x.ndim, k)) for k, x in mb.items()}
  step_fn = make_train_step(method, tx, compute_dtype=jnp.dtype(tc.compute_dtype),
                            grad_accum_steps=tc.grad_accum_steps,
                            on_nonfinite=tc.on_nonfinite, schedule=schedule,
                            micro_batch_constraint=micro_constraint)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))


def start_from(method, source: str, state, state_sh, mesh, rules, *,
               verbose: bool = True):
  """`state` with the parameters `method.adopt_params` makes of the latest parameters of the
  run in `source` (config.train.init_from); the optimizer state stays fresh. A stateful
  method's model state (e.g. an EMA codebook) is copied by path and shape, like parameters."""
  loaded = load_params(source)
  if verbose:
    print(f"init_from {source}: {describe_overlay(state.params, loaded)}", flush=True)

  def adopt(fresh, loaded):
    params = method.adopt_params(fresh, loaded)
    if jax.tree.structure(params) != jax.tree.structure(fresh):
      raise TokenlabError(f"{type(method).__name__}.adopt_params returned a tree that differs "
                          "from the model's parameters; it must keep every path of `fresh`")
    for (path, new), old in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree.leaves(fresh)):
      if new.shape != old.shape:
        raise TokenlabError(f"adopt_params changed the shape of {param_path(path)} from "
                            f"{old.shape} to {new.shape}")
    return jax.tree.map(lambda n, f: n.astype(f.dtype), params, fresh)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    params = jax.jit(adopt, out_shardings=state_sh.params, donate_argnums=0)(state.params,
                                                                             loaded)
    model_state = state.model_state
    if model_state is not None:
      model_state = jax.jit(lambda f, l: overlay_params(f, l)[0],
                            out_shardings=state_sh.model_state)(
                                model_state, load_params(source, item="model_state"))
  return state.replace(params=params, model_state=model_state)


def train(config: ConfigDict, workdir: str, *, train_iter_fn: IteratorFn | None = None,
          eval_iter_fn: IteratorFn | None = None) -> dict[str, Any]:
  """Runs (or resumes) the experiment `config` in `workdir`; returns the last metrics."""
  tc = config.train
  validate_train_config(config)
  if train_iter_fn is None:
    validate_data(config)
  on_nonfinite = tc.on_nonfinite
  max_skipped = tc.get("max_skipped_fraction", DEFAULT_MAX_SKIPPED_FRACTION)
  mesh = make_mesh(config.mesh, dcn_cfg=config.get("mesh_dcn"))
  rules = partitioning.rules_from_config(config.sharding_rules)
  partitioning.check_rules(rules, mesh)
  local_batch, micro = validate_batch(config, mesh, rules)
  method = registry.build_method(config.model)
  own_data = train_iter_fn is None and config.data.get("name") != METHOD_DATA
  if train_iter_fn is None or eval_iter_fn is None:
    default_train, default_eval = _default_iterators(config)
    train_iter_fn = train_iter_fn or default_train
    eval_iter_fn = eval_iter_fn or default_eval
  wd = Workdir(workdir)
  wd.check(config)
  is_main = jax.process_index() == 0
  # From here on the workdir is open (locked, writable); everything below is under `with`.
  with wd.open():
    return _train_in(config, wd, mesh, rules, method, local_batch, micro, train_iter_fn,
                     eval_iter_fn, is_main, on_nonfinite, max_skipped, own_data)


def _train_in(config: ConfigDict, wd: Workdir, mesh, rules, method, local_batch: int,
              micro: int, train_iter_fn: IteratorFn, eval_iter_fn: IteratorFn, is_main: bool,
              on_nonfinite: str, max_skipped: float, own_data: bool) -> dict[str, Any]:
  """`train` once the workdir is open: build, restore, run."""
  tc = config.train
  workdir = wd.path
  with data_errors(config.data if own_data else None):
    train_iter = train_iter_fn(local_batch, config.seed)
    first = next(train_iter)
  batch_shardings = partitioning.batch_shardings(
      mesh, rules, {k: (tc.batch_size, *np.shape(v)[1:]) for k, v in first.items()})
  example = {k: jax.ShapeDtypeStruct((micro, *np.shape(v)[1:]), np.asarray(v).dtype)
             for k, v in first.items()}

  schedule = make_schedule(config.optimizer, tc.steps)
  tx = make_optimizer(config.optimizer, tc.steps, tc.clip_grad_norm, tc.get("freeze", ""))
  rng = jax.random.key(config.seed)
  init_rng, step_rng, eval_rng = jax.random.split(rng, 3)
  init_params = method_init_fn(method, example)
  # The layout needs no compile; the state is initialised only when no checkpoint restores.
  state_shapes, state_sh = state_layout(init_params, tx, mesh, rules, jnp.dtype(tc.param_dtype))
  n_params = count_params(state_shapes.params)
  fresh = lambda: init_sharded_state(init_params, tx, init_rng, mesh, rules,
                                     jnp.dtype(tc.param_dtype), shardings=state_sh)[0]

  ckpt = Checkpointer(wd.checkpoints, keep=config.checkpoint.keep,
                      async_save=config.checkpoint.async_save)
  try:
    state, start, pending = _restore(config, wd, ckpt, method, state_shapes, state_sh, fresh,
                                     mesh, rules, train_iter, first, is_main)
  except BaseException:
    ckpt.close(quiet=True)
    raise
  wd.write_config(config)   # the run has started: only now is config.json (re)written
  if start == tc.steps:     # A finished run resumed: nothing to compile or run.
    ckpt.close()
    return finished_summary(workdir, start, n_params, is_main)
  compute_dtype = jnp.dtype(tc.compute_dtype)
  jit_step = jit_train_step(config, method, tx, schedule, mesh, rules, state_sh,
                            batch_shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    jit_eval = jax.jit(make_eval_step(method, compute_dtype),
                       in_shardings=(state_sh.params, batch_shardings, None,
                                     state_sh.model_state))

  def to_global(local: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(batch_shardings[k], np.asarray(v))
            for k, v in local.items()}

  seq_len = int(np.shape(first["inputs"])[1]) if "inputs" in first else 1
  tokens_per_step = tc.batch_size * seq_len
  flops_token = method.flops_per_token(seq_len) if "inputs" in first else None
  peak, peak_source = peak_flops()
  writer = wd.metrics_writer(enabled=is_main)
  if is_main and start == 0:
    writer.write(0, {"info/params": n_params, "info/devices": jax.device_count(),
                     "info/peak_flops": peak})

  def evaluate(step: int) -> dict[str, float]:
    """Exact metrics over the validation split (or its first eval_batches batches).

    With several processes, each feeds its own shard; one that runs out first feeds
    fully-masked batches until all are done, so every process runs the same collectives.
    """
    it = iter(eval_iter_fn(local_batch, config.seed))
    results, template = [], None
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for i in itertools.count():
        if tc.eval_batches and i >= tc.eval_batches:
          break
        batch = next(it, None)
        if jax.process_count() > 1:
          from jax.experimental import multihost_utils
          alive = multihost_utils.process_allgather(np.int32(batch is not None))
          if not np.any(alive):
            break
          if batch is None:
            from tokenlab.data.pipeline import masked_batch_like
            batch = masked_batch_like(template)
        elif batch is None:
          break
        template = batch
        results.append(jit_eval(state.params, to_global(batch), eval_rng, state.model_state))
    if not results:
      return {}
    return {f"eval/{k}": v for k, v in reduce_metrics(results).items()}

  def check_finite(metrics: dict[str, float], step: int) -> None:
    """Stops before a non-finite update is checkpointed (checked at every log and save)."""
    loss = metrics.get("train/step_loss", 0.0)
    grad_norm = metrics.get("train/grad_norm", 0.0)
    if on_nonfinite == "halt" and not (math.isfinite(loss) and math.isfinite(grad_norm)):
      raise TokenlabError(f"non-finite training loss/gradient (loss {loss}, grad norm "
                          f"{grad_norm}) within steps {step - len(window) + 1}..{step}; "
                          f"{last_good()}; lower config.optimizer.lr, use float32 compute, "
                          f"or set --config.train.on_nonfinite=skip")

  def last_good() -> str:
    ckpt.wait()
    last = ckpt.latest_step()
    return (f"the last good checkpoint is step {last}" if last is not None else
            "no checkpoint was saved yet (a re-run starts from step 0)")

  skipped_total = 0         # steps whose update on_nonfinite=skip dropped, in this run
  budget = tc.steps - start

  def count_skipped(scalars: dict[str, float], n_steps: int, step: int) -> None:
    """Turns the window's skipped fraction into counts; fails past max_skipped_fraction."""
    nonlocal skipped_total
    if "train/skipped_steps" not in scalars:
      return
    skipped = int(round(scalars["train/skipped_steps"] * n_steps))
    skipped_total += skipped
    scalars["train/skipped_steps"] = float(skipped)
    scalars["train/skipped_steps_total"] = float(skipped_total)
    if skipped_total > max_skipped * budget:
      raise TokenlabError(
          f"{skipped_total} of the {step - start} steps run so far had a non-finite loss or "
          f"gradient and were skipped (on_nonfinite=skip), more than "
          f"config.train.max_skipped_fraction={max_skipped} of this run's {budget} steps; "
          f"{last_good()}; lower config.optimizer.lr, use float32 compute, or raise "
          f"max_skipped_fraction")

  progress = Progress(tc.steps, start) if is_main and tc.progress else None

  # Compile ahead of time so that compile time is not counted as step time.
  t_compile = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    probe = to_global(pending[0] if pending else first)
    compiled_step = jit_step.lower(state, probe, step_rng).compile()
  compile_sec = time.perf_counter() - t_compile
  flops_step = (flops_token * tokens_per_step if flops_token else
                _xla_flops(compiled_step) * jax.device_count())
  if is_main and start == 0:
    writer.write(0, {"perf/compile_sec": compile_sec, "perf/flops_per_step": flops_step})

  window: list[dict] = []   # device metrics of the steps since the last log
  window_time = 0.0         # seconds spent in those steps (eval and checkpoint time excluded)
  t_mark = time.perf_counter()
  last: dict[str, Any] = {}
  step = start

  def pause_clock() -> None:
    nonlocal window_time
    jax.block_until_ready(state)
    window_time += time.perf_counter() - t_mark

  try:
    with _Preemption() as preempt:
      while step < tc.steps:
        batch = pending.pop() if pending else next(train_iter)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
          state, metrics = compiled_step(state, to_global(batch), step_rng)
        step += 1
        window.append(metrics)
        log_now = step % tc.log_every == 0 or step == tc.steps
        eval_now = (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps
        save_now = (step % config.checkpoint.every_steps == 0 or step == tc.steps
                    or preempt.check(step))
        if not (log_now or save_now or eval_now):
          if progress is not None:
            progress.update(1)
          continue
        pause_clock()
        if log_now or save_now:
          scalars = {f"train/{k}": v for k, v in reduce_metrics(window).items()}
          check_finite(scalars, step)
          count_skipped(scalars, len(window), step)
          if log_now:
            scalars["perf/steps_per_sec"] = len(window) / window_time
            scalars["perf/tokens_per_sec"] = len(window) * tokens_per_step / window_time
            scalars["perf/mfu"] = flops_step * len(window) / window_time / peak
            last.update(scalars)
            writer.write(step, scalars)
            if progress is not None:
              progress.log(step, scalars)
            window, window_time = [], 0.0
        if save_now:
          ckpt.save(step, state, train_iter)
        if eval_now:
          ev = evaluate(step)
          if ev:
            last.update(ev)
            writer.write(step, ev)
            if progress is not None:
              progress.write(f"eval at step {step}: " + ", ".join(
                  f"{k}={v:.4f}" for k, v in sorted(ev.items())))
        if progress is not None:
          progress.update(1)
        t_mark = time.perf_counter()
        if preempt.requested:
          if not save_now:  # SIGTERM arrived during eval: save this step before leaving.
            ckpt.save(step, state, train_iter)
          ckpt.wait()
          notice = f"stopped by SIGTERM at step {step}, checkpoint saved; re-run to resume"
          if progress is not None:
            progress.write(notice)
          elif is_main:
            print(f"tokenlab: {notice}", file=sys.stderr, flush=True)
          last["info/stopped_by"] = "SIGTERM"
          break
  except BaseException:
    if progress is not None:
      progress.close()
    ckpt.close(quiet=True)
    writer.close()
    raise
  if progress is not None:
    progress.close()
  ckpt.close()
  writer.close()
  last.update({"step": step, "info/params": n_params, "info/peak_source": peak_source})
  if on_nonfinite == "skip":
    last["train/skipped_steps"] = skipped_total
    last["info/steps_run"] = step - start
  return last


def finished_summary(workdir: str, step: int, n_params: int, is_main: bool) -> dict[str, Any]:
  """What a finished run resumed returns: no step or eval runs; the metrics it logged, the
  last write of each winning."""
  last: dict[str, Any] = {}
  if is_main:
    for row in read_metrics(workdir):
      last.update({k: v for k, v in row.items() if k not in ("step", "nonfinite")})
  last.update({"step": step, "info/params": n_params})
  return last


def _restore(config: ConfigDict, wd: Workdir, ckpt: Checkpointer, method, state_shapes,
             state_sh, fresh: Callable[[], Any], mesh, rules, train_iter, first,
             is_main: bool):
  """(state, start step, pending batches): the newest checkpoint that restores (damaged ones
  skipped, then moved to WORKDIR/checkpoints.damaged, never deleted), else init_from, else
  the fresh state `fresh()`."""
  tc = config.train
  if tc.get("freeze"):
    check_freeze(tc.freeze, state_shapes.params)
  restored, start, skipped = ckpt.restore_latest(abstract_state(state_sh, state_shapes),
                                                 train_iter)
  start = start or 0
  if start > tc.steps:
    raise TokenlabError(f"workdir {wd.path} is at step {start}, past config.train.steps="
                        f"{tc.steps}; raise train.steps to train on, or use `tokenlab eval "
                        f"--workdir {wd.path}`")
  if skipped and is_main:
    moved = ckpt.set_aside([s for s, _ in skipped], wd.checkpoints + ".damaged")
    print(f"tokenlab: warning: resumed from step {start}; damaged checkpoint"
          f"{'s' if len(moved) > 1 else ''} moved to {', '.join(moved)} (not deleted)",
          file=sys.stderr, flush=True)
  if restored is not None:
    return restored, start, []
  state = fresh()
  if tc.get("init_from"):
    state = start_from(method, tc.init_from, state, state_sh, mesh, rules, verbose=is_main)
  return state, 0, [first]


def _xla_flops(compiled) -> float:
  """FLOPs of one step of one device's program from XLA's cost analysis."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))
  except Exception:  # Cost analysis is best-effort on some backends.
    return 0.0
