"""Orbax checkpoints of the train state *and* the data iterator, under WORKDIR/checkpoints.

Saving is asynchronous (training goes on while arrays are written) and atomic (orbax writes
into a temporary directory and renames it when complete, so a half-written checkpoint is
never restored). The data iterator's state is saved next to the arrays, so a restart
resumes on exactly the next batch: one file per logical shard for the elastic training stream
(`tokenlab.data.elastic`: a run restores with another number of processes), else one file per
process, as grain's own handler writes them (`DataStateHandler`).

A damaged checkpoint (a truncated or garbled array file, an empty or garbled `_METADATA`, a
step directory without orbax's commit markers, a garbled data-iterator state) is skipped by
`restore_latest`, which walks back to the newest checkpoint that restores and says on stderr
which it skipped and why. Nothing here deletes a damaged checkpoint; the trainer moves one it
walked past to WORKDIR/checkpoints.damaged/ (`set_aside`) so that a new save of that step does
not collide with it and orbax's `keep` never counts or removes it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from tokenlab.errors import TokenlabError


COMMIT_MARKERS = ("commit_success.txt", "_CHECKPOINT_METADATA")


class CheckpointDamaged(TokenlabError):
  """A checkpoint that cannot be read (as opposed to one of another model)."""


def _no_replica_parallel_saves_on_cpu() -> None:
  """On CPU devices, write each replicated array once, from replica 0.

  Orbax's default for jax.Array splits the writing of a replicated array among its replicas,
  which on CPU compiles and runs one slicing program per array and device (with 4 devices,
  40-80 small compiles for a tiny model's save) and gains nothing: every "device" is the same
  host memory. Orbax itself turns this off on GPU; accelerators (TPU) keep the default.
  """
  global _CPU_HANDLER_SET
  if _CPU_HANDLER_SET or jax.default_backend() != "cpu":
    return
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  _CPU_HANDLER_SET = True


_CPU_HANDLER_SET = False


class Checkpointer:
  """Saves and restores {state, data} items at integer steps."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    _no_replica_parallel_saves_on_cpu()
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": DataStateHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any | None = None,
           force: bool = True) -> bool:
    """Saves (asynchronously, if so configured); a failure, of this save or of an earlier
    asynchronous one, raises TokenlabError naming the step, the directory and the cause."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = DataSave(_as_grain(data_iterator))
    try:
      return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # noqa: BLE001 (any failure to write is the same message)
      raise self._save_failed(step, e) from e

  def _save_failed(self, step: int | None, e: Exception) -> TokenlabError:
    done = [s for s in self.all_steps() if s != step]
    return TokenlabError(
        f"saving the checkpoint{'' if step is None else f' of step {step}'} into "
        f"{self.directory} failed ({_reason(e)}); the run stopped there; the last saved "
        f"checkpoint is {f'step {done[-1]}' if done else 'none'}: fix the directory (space, "
        f"permissions) and re-run to resume")

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores the state into `abstract_state`'s shapes and shardings (orbax reshards onto
    whatever mesh the shardings name), and the data iterator in place.

    A checkpoint of another model is refused (TokenlabError) before anything is read, listing
    the first parameters whose names or shapes differ; a checkpoint that cannot be read raises
    CheckpointDamaged saying why.
    """
    if step not in self.all_steps():
      raise TokenlabError(f"{self.directory} has no checkpoint of step {step}; it has "
                          f"{_steps_text(self.all_steps())}")
    missing = self.uncommitted(step)
    if missing:
      raise CheckpointDamaged(missing)
    try:
      saved = self.manager.item_metadata(step)["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointDamaged(f"its metadata cannot be read ({_reason(e)})") from e
    self.check_compatible(saved, abstract_state, step)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = DataRestore(_as_grain(data_iterator))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001
      raise CheckpointDamaged(f"it cannot be read ({_reason(e)})") from e
    return restored["state"]

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None
                     ) -> tuple[Any, int | None, list[tuple[int, str]]]:
    """(state, step, skipped) from the newest checkpoint that restores, walking back over
    damaged ones (each named on stderr with the reason; none is deleted). (None, None, [])
    when there is no checkpoint; TokenlabError when none restores or one is of another model.
    """
    skipped: list[tuple[int, str]] = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except CheckpointDamaged as e:
        skipped.append((step, str(e)))
        continue
      for bad, why in skipped:
        print(f"tokenlab: warning: skipped damaged checkpoint {self.directory}/{bad} ({why}); "
              f"restored step {step}", file=sys.stderr, flush=True)
      return state, step, skipped
    if skipped:
      raise TokenlabError(
          f"no checkpoint in {self.directory} can be restored (" +
          "; ".join(f"step {s}: {why}" for s, why in skipped[:3]) +
          f"{'; ...' if len(skipped) > 3 else ''}); they are kept on disk; move "
          f"checkpoints/ aside to start over, or use a new --workdir")
    return None, None, skipped

  def uncommitted(self, step: int) -> str:
    """Why step's directory is not a finished save ('' when it is): orbax writes its commit
    markers (commit_success.txt, _CHECKPOINT_METADATA) last."""
    path = self.directory / str(step)
    if not any((path / m).exists() for m in COMMIT_MARKERS):
      return (f"no orbax commit marker ({' or '.join(COMMIT_MARKERS)}): a save that never "
              f"finished")
    return ""

  def set_aside(self, steps: list[int], destination: str) -> list[str]:
    """Moves the step directories `steps` (damaged ones a restore walked past) into
    `destination` (never deletes them) and returns where each went."""
    moved = []
    dest = epath.Path(destination)
    dest.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = dest / str(step)
      n = 1
      while target.exists():
        target = dest / f"{step}.{n}"
        n += 1
      (self.directory / str(step)).rename(target)
      moved.append(str(target))
    self.manager.reload()
    return moved

  def check_compatible(self, saved: Any, abstract_state: Any, step: int) -> None:
    saved = _shapes(saved)
    wanted = _shapes(abstract_state)
    problems = [f"{k}: checkpoint {saved[k]} vs model {wanted[k]}"
                for k in wanted if k in saved and saved[k] != wanted[k]]
    problems += [f"{k}: not in checkpoint" for k in wanted if k not in saved]
    problems += [f"{k}: not in model" for k in saved if k not in wanted]
    if problems:
      raise TokenlabError(
          f"checkpoint {self.directory}/{step} is from a different model ({len(problems)} "
          f"mismatches; first: {'; '.join(problems[:3])}); nothing was overwritten: use a "
          f"new --workdir or the model config it was saved with")

  def wait(self) -> None:
    """Waits for an asynchronous save; its failure raises TokenlabError (see `save`)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_failed(None, e) from e

  def close(self, quiet: bool = False) -> None:
    """Finishes pending saves and closes; `quiet`: on the way out of an error, a failure
    here is not raised over it."""
    try:
      self.wait()
    except TokenlabError:
      if not quiet:
        raise
    finally:
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001
        if not quiet:
          raise


def _reason(e: BaseException) -> str:
  """One short line of an exception: its type and the first line of its message."""
  text = (str(e).strip().splitlines() or [""])[0]
  text = text.split(" See full TensorStore details")[0]
  return f"{type(e).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def _steps_text(steps: list[int]) -> str:
  if not steps:
    return "none"
  shown = ", ".join(map(str, steps[-10:]))
  return f"step{'s' if len(steps) > 1 else ''} {'..., ' if len(steps) > 10 else ''}{shown}"


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params.decoder.layer_0...': shape} for every array (metadata) leaf of `tree`."""
  tree = getattr(tree, "tree", tree)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, "shape"):
      out[".".join(_key_name(k) for k in path)] = tuple(leaf.shape)
  return out


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


class _StateAdapter:
  """Lets grain's orbax handler save any iterator with get_state()/set_state().

  grain's handler stores bytes states as they are and dict states as JSON only for its own
  DatasetIterator; user iterators (custom pipelines, tests) may return either.
  """

  def __init__(self, iterator: Any):
    self.iterator = iterator

  def get_state(self) -> bytes:
    state = self.iterator.get_state()
    return state if isinstance(state, bytes) else json.dumps(state).encode()

  def set_state(self, state: bytes) -> None:
    current = self.iterator.get_state()
    self.iterator.set_state(state if isinstance(current, bytes) else json.loads(state))

  def start_prefetch(self) -> None:
    pass


def _as_grain(iterator: Any) -> Any:
  if (isinstance(iterator, (grain.DatasetIterator, grain.DataLoaderIterator))
      or hasattr(iterator, "shard_states")):
    return iterator
  return _StateAdapter(iterator)


# ---------------------------------------------------------------------------------------------
# The data item of a checkpoint.

_SHARD_FILE = re.compile(r"shard_(\d+)-of-(\d+)\.json$")


class _ShardStates(Mapping):
  """{shard id: state}, each file read when asked for (a process reads only its shards)."""

  def __init__(self, files: dict[int, epath.Path]):
    self._files = files

  def __getitem__(self, shard: int) -> Any:
    return json.loads(self._files[shard].read_text())

  def __iter__(self):
    return iter(self._files)

  def __len__(self) -> int:
    return len(self._files)


class DataStateHandler:
  """Orbax handler of the data-iterator item.

  An elastic stream (an iterator with `shard_states()`, `tokenlab.data.elastic`) is stored as
  one `shard_K-of-S.json` per logical shard, each written by the process that runs it, so any
  process count that divides S can restore it. Other iterators are stored as
  `process_I-of-N.json`, exactly as grain's handler does (and read back the same way).
  """

  def save(self, directory: epath.Path, item: Any = None, args: Any = None) -> None:
    item = item or args.item
    if hasattr(item, "shard_states"):
      for shard, state in item.shard_states().items():
        (directory / f"shard_{shard:05d}-of-{item.num_shards:05d}.json").write_text(
            json.dumps(state))
      return
    if isinstance(item, grain.DatasetIterator):
      state = json.dumps(item.get_state(), indent=1)
    else:
      state = item.get_state().decode()
    (directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json").write_text(
        state)

  def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> Any:
    item = item or args.item
    if hasattr(item, "shard_states"):
      files, counts = {}, set()
      for path in directory.iterdir():
        m = _SHARD_FILE.match(path.name)
        if m:
          files[int(m.group(1))] = path
          counts.add(int(m.group(2)))
      if len(counts) != 1:
        raise ValueError(f"{directory} holds no per-shard data states (a checkpoint of a "
                         f"per-process stream, or damaged); its files: "
                         f"{sorted(p.name for p in directory.iterdir())[:6]}")
      item.set_shard_states(counts.pop(), _ShardStates(files))
      return item
    filename = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not filename.exists():
      raise ValueError(f"{filename} does not exist (saved with another process count?)")
    state = filename.read_text()
    item.set_state(json.loads(state) if isinstance(item, grain.DatasetIterator)
                   else state.encode())
    if hasattr(item, "start_prefetch"):
      item.start_prefetch()
    return item

  def structure(self, directory: epath.Path) -> Any:
    return None

  def metadata(self, directory: epath.Path) -> Any:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass

  @classmethod
  def typestr(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any
