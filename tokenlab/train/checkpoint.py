"""Orbax checkpoints of the train state *and* the data iterator, under WORKDIR/checkpoints.

Saving is asynchronous (training goes on while arrays are written) and atomic (orbax writes
into a temporary directory and renames it when complete, so a half-written checkpoint is
never restored). The grain iterator state is saved per process next to the arrays, so a
restart resumes on exactly the next batch.
"""

from __future__ import annotations

from typing import Any

import json

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from tokenlab.errors import TokenlabError


class Checkpointer:
  """Saves and restores {state, data} items at integer steps."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any | None = None,
           force: bool = True) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(_as_grain(data_iterator))
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores the state into `abstract_state`'s shapes and shardings (orbax reshards onto
    whatever mesh the shardings name), and the data iterator in place.

    A checkpoint of another model is refused before anything is read, listing the first
    parameters whose names or shapes differ.
    """
    self.check_compatible(step, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(_as_grain(data_iterator))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
      raise TokenlabError(
          f"checkpoint at step {step} in {self.directory} does not fit this model/config "
          f"({str(e).splitlines()[0][:200]}); use a new --workdir or the config it was "
          f"saved with") from e
    return restored["state"]

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    saved = _shapes(self.manager.item_metadata(step)["state"])
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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
  if isinstance(iterator, (grain.DatasetIterator, grain.DataLoaderIterator)):
    return iterator
  return _StateAdapter(iterator)
