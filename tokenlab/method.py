"""The contract between a method and the trainer.

A method never touches the trainer and the trainer never knows a method's name. What passes
between them:

* ``init(rng, batch) -> params``: a parameter pytree whose leaves carry logical axis names
  (``flax.linen.with_logical_partitioning``), so the trainer can shard them by config rules.
* ``loss(params, batch, rng) -> (loss, metrics)``: a scalar to minimise and a dict of
  :class:`Average` (or plain scalars) to log.
* optionally ``sample(params, prompt, rng, **kw)`` for generative methods, and
  ``flops_per_token(seq_len)`` for an analytic MFU.

Non-parameter state (e.g. an EMA codebook, batch statistics, a step counter) is opt-in: a
method that names its flax collections in ``state_collections`` (e.g. ``('vq_stats',)``)

* returns from ``init`` the flax variables dict ``{'params': ..., 'vq_stats': ...}`` (the
  collections named, nothing else);
* implements ``loss(params, batch, rng, state) -> (loss, metrics, new_state)`` and
  ``eval_metrics(params, batch, rng, state)``, where ``state`` is ``{collection: tree}`` (the
  variables without 'params'); ``new_state`` has the same structure, shapes and dtypes;
* receives ``state=`` as a keyword in ``sample``.

The trainer keeps the state in ``TrainState.model_state`` (sharded by the same logical-axis
rules as parameters when its leaves are boxed, else replicated), checkpoints and restores it,
never differentiates it, and with gradient accumulation threads it through the micro-batches
in order (so k micro-batches update it k times per optimizer step). ``init_variables``,
``call_loss`` and ``call_eval_metrics`` below are the one place that tells the two kinds apart.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from tokenlab.errors import ConfigError, nearest

PyTree = Any
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class Average:
  """A metric kept as (total, count) so that averages over micro-batches, devices and eval
  batches are exact: the mean of a ratio is taken once, at the end.

  Example: bits per byte = Average(total=sum of nll in bits, count=number of bytes).
  """
  total: jax.Array
  count: jax.Array

  @classmethod
  def of(cls, total: jax.Array, count: jax.Array) -> "Average":
    return cls(jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32))

  def __add__(self, other: "Average") -> "Average":
    return Average(self.total + other.total, self.count + other.count)

  def value(self) -> jax.Array:
    return self.total / jnp.maximum(self.count, 1e-12)


def as_average(value: Any) -> Average:
  """Plain scalars count as one observation."""
  return value if isinstance(value, Average) else Average.of(value, 1.0)


class Method(abc.ABC):
  """Base class of every paper method; see the module docstring for the contract."""

  #: dataclass type holding the method's model hyper-parameters (config.model minus `name`).
  Config: type = None  # type: ignore[assignment]

  #: flax collections of non-parameter state the trainer carries (see the module docstring);
  #: empty for a stateless method.
  state_collections: tuple[str, ...] = ()

  def __init__(self, config: Any):
    self.config = config

  @classmethod
  def from_config(cls, model_cfg: ConfigDict | dict) -> "Method":
    """Builds the method from ``config.model``; unknown keys fail with the nearest valid one."""
    return cls(dataclass_from_config(cls.Config, model_cfg, prefix="model"))

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    """Returns logically-annotated parameters for a batch of this shape."""

  @abc.abstractmethod
  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """Returns (scalar loss, metrics)."""

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array,
                   *state: PyTree) -> dict[str, Any]:
    """Metrics on held-out data; by default those of the loss (`state`: a stateful method's
    state, passed on to its loss; the updated state is dropped)."""
    return self.loss(params, batch, rng, *state)[1]

  def adopt_params(self, fresh: PyTree, loaded: PyTree) -> PyTree:
    """The starting parameters of a run with `config.train.init_from`: `fresh` is this model's
    initialisation, `loaded` the other run's parameters (both unboxed). By default every
    parameter of the same path and shape is copied and the others stay fresh; methods that
    grow a model or duplicate one (policy and reference) override this. Runs under jit, so
    it must be shape-static; returns a tree of `fresh`'s structure, shapes and dtypes."""
    from tokenlab.train.init_from import overlay_params
    return overlay_params(fresh, loaded)[0]

  def flops_per_token(self, seq_len: int) -> float | None:
    """Training FLOPs (forward + backward) per token, or None to use XLA's cost analysis."""
    return None


def init_variables(method: Method, rng: jax.Array, batch: Batch) -> tuple[PyTree, PyTree]:
  """(params, state) of `method` for `batch`: state is None for a stateless method, else the
  dict {collection: tree} of its `state_collections` (a ConfigError names a missing one)."""
  out = method.init(rng, batch)
  if not method.state_collections:
    return out, None
  missing = [c for c in ("params", *method.state_collections) if c not in out]
  if missing:
    raise ConfigError(f"{type(method).__name__} declares state_collections="
                      f"{method.state_collections} but its init returned no {missing}")
  return out["params"], {c: out[c] for c in method.state_collections}


def as_variables(params: PyTree, state: PyTree = None) -> dict[str, PyTree]:
  """The flax variables dict {'params': params, **state} (state None: params only)."""
  return {"params": params, **(state or {})}


def call_loss(method: Method, params: PyTree, batch: Batch, rng: jax.Array,
              state: PyTree = None) -> tuple[jax.Array, dict[str, Any], PyTree]:
  """(loss, metrics, new state) for either kind of method (state None when stateless)."""
  if not method.state_collections:
    loss, metrics = method.loss(params, batch, rng)
    return loss, metrics, None
  return method.loss(params, batch, rng, state)


def call_eval_metrics(method: Method, params: PyTree, batch: Batch, rng: jax.Array,
                      state: PyTree = None) -> dict[str, Any]:
  """`method.eval_metrics` for either kind of method."""
  if not method.state_collections:
    return method.eval_metrics(params, batch, rng)
  return method.eval_metrics(params, batch, rng, state)


def random_params(method: Method, batch: Batch, seed: int = 0, scale: float = 0.3) -> PyTree:
  """Random float32 numpy parameters of `method`'s shapes for `batch` (arrays or
  ShapeDtypeStructs), unboxed, normal(0, scale). Nothing is compiled (jax.eval_shape of
  `init`): for tests and benchmarks whose results do not depend on trained values."""
  import numpy as np
  shapes = jax.eval_shape(method.init, jax.random.key(0), batch)
  shapes = jax.tree.map(lambda b: getattr(b, "value", b), shapes,
                        is_leaf=lambda b: hasattr(b, "value"))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(np.float32), shapes)


def dataclass_from_config(cls: type, cfg: ConfigDict | dict, *, prefix: str) -> Any:
  """Instantiates dataclass `cls` from config entries (ignoring `name`).

  Raises ConfigError naming the nearest field for an unknown key.
  """
  values = dict(cfg.to_dict() if isinstance(cfg, ConfigDict) else cfg)
  values.pop("name", None)
  fields = {f.name for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields:
      raise ConfigError(f"unknown key '{prefix}.{key}'{nearest(key, fields)}; valid keys: "
                        f"{', '.join(sorted(fields))}")
  for f in dataclasses.fields(cls):
    if f.name in values and isinstance(values[f.name], list):
      values[f.name] = tuple(values[f.name])
  return cls(**values)
