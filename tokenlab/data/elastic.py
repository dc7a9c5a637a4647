"""Elastic training streams: the global batch does not depend on the number of processes.

The training split is cut into S logical shards (records k, k + S, k + 2S, ... for shard k).
Each shard is its own grain pipeline (shuffle with the run's seed, tokenize, pack, batch) that
yields B / S rows per step, B the global batch. The global batch at step s is the
concatenation of every shard's s-th batch in shard order, so it is a function of (seed, s, S)
alone. With P processes (P divides S) process p runs shards [p S / P, (p + 1) S / P) and
feeds exactly its contiguous block of rows of that global batch, which is the block
`jax.make_array_from_process_local_data` expects of it.

Checkpoints hold one iterator state per shard (tokenlab/train/checkpoint.py writes one file
per shard), so a run saved with P processes restores with any P' that divides S: each process
reads the states of the shards it now owns, and training continues on exactly the batches the
uninterrupted run would have seen.

S: `config.data.shards`, or 0 = auto: P times the largest divisor d of B / P with P d <= 8
(at least P). The auto value is 8 for the usual small cases whatever P (B = 8, 16, 32, ...
with P = 1, 2, 4 or 8), so runs are elastic between those without any setting; a checkpoint
made under another auto value is adopted on restore (`ShardedIterator.set_state`). Set
`config.data.shards` explicitly for pods (e.g. the largest process count the run may use).
Shards are disjoint and each covers its records once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tokenlab.errors import ConfigError, TokenlabError

AUTO_MAX_SHARDS = 8   # auto: at most this many shards unless there are more processes

ShardFactory = Callable[[int, int, int], Iterator]   # (shard, num_shards, rows) -> iterator


def auto_shards(global_batch: int, process_count: int) -> int:
  """The auto shard count: process_count x the largest divisor d of global_batch /
  process_count with process_count x d <= max(AUTO_MAX_SHARDS, process_count)."""
  per = global_batch // process_count
  cap = max(AUTO_MAX_SHARDS, process_count)
  d = max(d for d in range(1, per + 1) if per % d == 0 and process_count * d <= cap)
  return process_count * d


def shard_seed(seed: int, shard: int) -> int:
  """Shard `shard`'s shuffling seed, derived from the run's seed: shards given the same seed
  would walk their records in lockstep (record i S + k next to i S + k + 1 in one batch)."""
  return int(np.random.SeedSequence((seed, shard)).generate_state(1)[0] & 0x7FFFFFFF)


def resolve_shards(requested: int, global_batch: int, process_count: int) -> int:
  """`config.data.shards` (0 = auto) checked against the batch and the process count."""
  if global_batch % process_count:
    raise ConfigError(f"config.train.batch_size={global_batch} is not divisible by the "
                      f"{process_count} processes")
  shards = requested or auto_shards(global_batch, process_count)
  _check(shards, global_batch, process_count, "config.data.shards")
  return shards


def _check(shards: int, global_batch: int, process_count: int, where: str) -> None:
  if global_batch % shards:
    raise ConfigError(f"{where}={shards} does not divide config.train.batch_size="
                      f"{global_batch}; every shard gives batch_size / shards rows a step: "
                      f"choose a divisor of the batch")
  if shards % process_count:
    raise ConfigError(f"{where}={shards} is not divisible by the {process_count} processes "
                      f"(each process runs shards / processes shards); set config.data.shards "
                      f"to a multiple of {process_count} that divides the batch")


def owned_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """The contiguous block of shards process `process_index` runs."""
  per = num_shards // process_count
  return list(range(process_index * per, (process_index + 1) * per))


class ShardedIterator:
  """This process's rows of the global batch: its shards' batches, concatenated in order.

  Args:
    factory: (shard, num_shards, rows per step) -> a checkpointable iterator of batches.
    global_batch: B, rows of the global batch.
    process_index, process_count: this process among P.
    num_shards: S (resolved; see `resolve_shards`).
    auto: S came from the auto rule, so a checkpoint with another S may be adopted.
  """

  def __init__(self, factory: ShardFactory, *, global_batch: int, process_index: int,
               process_count: int, num_shards: int, auto: bool = False):
    self._factory = factory
    self.global_batch = global_batch
    self.process_index, self.process_count = process_index, process_count
    self.auto = auto
    self._build(num_shards)

  def _build(self, num_shards: int) -> None:
    _check(num_shards, self.global_batch, self.process_count, "the shard count")
    self.num_shards = num_shards
    self.shard_ids = owned_shards(num_shards, self.process_index, self.process_count)
    rows = self.global_batch // num_shards
    self._iters = [self._factory(k, num_shards, rows) for k in self.shard_ids]

  def __iter__(self) -> "ShardedIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iters]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

  def shard_states(self) -> dict[int, Any]:
    """{shard id: that shard's iterator state} for the shards this process runs."""
    return {k: it.get_state() for k, it in zip(self.shard_ids, self._iters)}

  def set_shard_states(self, num_shards: int, states: dict[int, Any]) -> None:
    """Restores from a checkpoint's per-shard states (all shards, or at least ours)."""
    if num_shards != self.num_shards:
      if not self.auto:
        raise TokenlabError(
            f"the checkpoint's data stream has {num_shards} shards but config.data.shards="
            f"{self.num_shards}; set config.data.shards={num_shards} to resume it (or start a "
            f"new run)")
      self._build(num_shards)   # auto: adopt the checkpoint's shard count
    missing = [k for k in self.shard_ids if k not in states]
    if missing:
      raise TokenlabError(f"the checkpoint has no data-iterator state of shards {missing}")
    for k, it in zip(self.shard_ids, self._iters):
      it.set_state(states[k])

  def get_state(self) -> dict[str, Any]:
    return {"num_shards": self.num_shards,
            "shards": {str(k): v for k, v in self.shard_states().items()}}

  def set_state(self, state: dict[str, Any]) -> None:
    self.set_shard_states(int(state["num_shards"]),
                          {int(k): v for k, v in state["shards"].items()})


def sharded_iterator(make_shard: ShardFactory, *, global_batch: int, requested_shards: int,
                     process_index: int, process_count: int) -> ShardedIterator:
  """A `ShardedIterator` with the shard count resolved from `config.data.shards`."""
  shards = resolve_shards(requested_shards, global_batch, process_count)
  return ShardedIterator(make_shard, global_batch=global_batch, process_index=process_index,
                         process_count=process_count, num_shards=shards,
                         auto=requested_shards == 0)


__all__ = ["ShardedIterator", "sharded_iterator", "auto_shards", "resolve_shards", "shard_seed",
           "owned_shards"]
