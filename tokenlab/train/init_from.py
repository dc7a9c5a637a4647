"""Starting a run from another run's parameters (`config.train.init_from`) and freezing
parameters (`config.train.freeze`): fine-tuning stages, grown models, frozen references.

`init_from` reads only the parameters (and a stateful method's model state, e.g. an EMA
codebook) of the other run's latest checkpoint (not its optimizer state, step or data
position: a new run starts from step 0 with a fresh optimizer). How the loaded parameters
map onto the new model is the method's `adopt_params`; the default copies every parameter of
the same path and shape (`overlay_params`) and keeps the rest fresh; the model state is
always overlaid by path and shape.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from tokenlab.errors import ConfigError, TokenlabError

PyTree = Any


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints, or WORKDIR itself when it is a checkpoints directory."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  nested = os.path.join(workdir, "checkpoints")
  if os.path.isdir(nested):
    return nested
  if os.path.isdir(workdir) and any(n.isdigit() for n in os.listdir(workdir)):
    return workdir
  raise TokenlabError(f"init_from='{workdir}' has no checkpoints/ directory; train that run "
                      "first or point init_from at a workdir that has one")


def load_params(workdir: str, step: int | None = None, item: str = "params") -> dict:
  """The parameters (numpy, nested dicts) of WORKDIR's latest checkpoint (or of `step`),
  without building the model that wrote them. item='model_state': a stateful method's
  non-parameter state instead ({} when the run had none)."""
  import orbax.checkpoint as ocp
  from tokenlab.train.checkpoint import Checkpointer
  directory = checkpoint_dir(workdir)
  ckpt = Checkpointer(directory, async_save=False)
  latest = ckpt.latest_step()
  ckpt.close()
  step = latest if step is None else step
  if step is None:
    raise TokenlabError(f"init_from='{workdir}' holds no finished checkpoint yet; train it "
                        "first (a checkpoint is written at the end of every run)")
  path = os.path.join(directory, str(step), "state")
  if not os.path.isdir(path):
    raise TokenlabError(f"init_from='{workdir}' has no checkpoint of step {step}")
  restored = ocp.StandardCheckpointer().restore(path)
  return jax.tree.map(np.asarray, restored.get(item) or {})


def overlay_params(fresh: PyTree, loaded: dict) -> tuple[PyTree, list[str]]:
  """Replaces every parameter of `fresh` (arrays, or logically boxed arrays) whose path and
  shape are in `loaded`; returns the new tree and the paths kept from `fresh`."""
  flat_loaded = traverse_util.flatten_dict(loaded)
  flat = traverse_util.flatten_dict(fresh)
  kept = []
  for path, leaf in flat.items():
    value = getattr(leaf, "value", leaf)
    new = flat_loaded.get(path)
    if new is not None and tuple(new.shape) == tuple(value.shape):
      new = jnp.asarray(new, value.dtype)
      flat[path] = leaf.replace_boxed(new) if hasattr(leaf, "replace_boxed") else new
    else:
      kept.append("/".join(path))
  return traverse_util.unflatten_dict(flat), kept


def describe_overlay(fresh: PyTree, loaded: dict) -> str:
  """One line: how many parameters match by path and shape, which stay fresh, which of the
  checkpoint's are unused (shapes only; for the log)."""
  shapes = lambda t: {"/".join(k): tuple(np.shape(getattr(v, "value", v)))
                      for k, v in traverse_util.flatten_dict(t).items()}
  new, old = shapes(fresh), shapes(loaded)
  same = [p for p in new if old.get(p) == new[p]]
  fresh_only = [p for p in new if p not in same]
  unused = [p for p in old if p not in new]
  text = f"{len(same)} of {len(new)} parameters match the checkpoint by path and shape"
  if fresh_only:
    text += f"; differing or new: {_few(fresh_only)}"
  if unused:
    text += f"; in the checkpoint only: {_few(unused)}"
  return text


def _few(paths: list[str], n: int = 4) -> str:
  return ", ".join(paths[:n]) + (f" (+{len(paths) - n} more)" if len(paths) > n else "")


def param_path(path: tuple) -> str:
  """'a/b/c' from a jax key path, skipping box attributes (LogicallyPartitioned.value)."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def freeze_labels(pattern: str):
  """A label function for optax.multi_transform: 'frozen' where the parameter's path matches
  the regex `pattern` (re.search), else 'train'."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"config.train.freeze='{pattern}' is not a valid regular expression "
                      f"({e}); e.g. '^reference/' freezes the subtree 'reference'") from None

  def labels(params: PyTree) -> PyTree:
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if regex.search(param_path(p)) else "train", params)
  return labels


def check_freeze(pattern: str, params: PyTree) -> tuple[int, int]:
  """(frozen, total) parameter counts; raises ConfigError when the pattern matches nothing
  or everything, naming some real paths."""
  labels = jax.tree.leaves(freeze_labels(pattern)(params))
  frozen = sum(1 for label in labels if label == "frozen")
  if frozen == 0 or frozen == len(labels):
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    what = "no parameter" if frozen == 0 else "every parameter (nothing would train)"
    raise ConfigError(f"config.train.freeze='{pattern}' matches {what}; parameter paths look "
                      f"like: {_few(paths, 6)}")
  return frozen, len(labels)
