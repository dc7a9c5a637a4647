"""Orbax checkpoints of the train state *and* the data iterator, under WORKDIR/checkpoints.

Saving is asynchronous (training goes on while arrays are written) and atomic (orbax writes
into a temporary directory and renames it when complete, so a half-written checkpoint is
never restored). The grain iterator state is saved per process next to the arrays, so a
restart resumes on exactly the next batch.
"""

from __future__ import annotations

from typing import Any

import grain
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
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores the state into `abstract_state`'s shapes and shardings (orbax reshards), and
    the data iterator in place."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
      raise TokenlabError(
          f"checkpoint at step {step} in {self.directory} does not fit this model/config "
          f"({str(e).splitlines()[0][:200]}); use a new --workdir or the config it was "
          f"saved with") from e
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
