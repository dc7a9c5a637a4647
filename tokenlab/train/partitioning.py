"""Logical axis rules -> shardings (the t5x / MaxText scheme, held in `config.sharding_rules`).

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `vocab`, ...); activations are
constrained with `batch`, `length`, ... The rules map each logical name to mesh axes, so
switching between data parallelism, FSDP and tensor parallelism is a config change.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokenlab.errors import ConfigError


def rules_from_config(rules_cfg) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules to ((logical, mesh_axes), ...) with tuples, not lists."""
  out = []
  for logical, axes in rules_cfg:
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((str(logical), axes))
  return tuple(out)


def check_rules(rules, mesh: Mesh) -> None:
  """Every mesh axis a rule names must exist in the mesh."""
  for logical, axes in rules:
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in mesh.axis_names:
        raise ConfigError(f"sharding rule '{logical}' -> '{axis}' names a mesh axis that "
                          f"config.mesh lacks (axes: {list(mesh.axis_names)}); add it with "
                          f"size 1 or change the rule")


def logical_to_spec(logical_axes: tuple[str | None, ...], rules) -> PartitionSpec:
  """('batch', 'length') -> PartitionSpec(('data', 'fsdp'), None) under `rules`."""
  return nn.logical_to_mesh_axes(logical_axes, rules)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of (possibly logically boxed) abstract arrays.

  Unannotated leaves (e.g. the optimizer step count) are replicated. A dimension that its
  mesh axes do not divide raises ConfigError naming the parameter.
  """
  specs = nn.get_partition_spec(abstract_tree)
  specs = jax.tree.map(lambda s: nn.logical_to_mesh_axes(tuple(s), rules)
                       if isinstance(s, PartitionSpec) else s, specs,
                       is_leaf=lambda s: isinstance(s, PartitionSpec))
  unboxed = strip_boxes(abstract_tree)
  paths = jax.tree_util.tree_flatten_with_path(unboxed)[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec))
  for (path, leaf), spec in zip(paths, flat_specs):
    for dim, axes in zip(leaf.shape, tuple(spec)):
      if axes is None:
        continue
      size = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
      if dim % size:
        name = jax.tree_util.keystr(path)
        raise ConfigError(f"parameter {name} of shape {leaf.shape} cannot be split over mesh "
                          f"axes {axes} (size {size}); change config.mesh or the model size")
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, PartitionSpec))


def strip_boxes(tree: Any) -> Any:
  """Replaces logical-partitioning boxes by their values (no sharding constraint applied)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def batch_axes(rules) -> Any:
  """The mesh axes the logical `batch` axis maps to."""
  return logical_to_spec(("batch",), rules)[0]


def data_parallel_size(mesh: Mesh, rules) -> int:
  axes = batch_axes(rules)
  if axes is None:
    return 1
  return math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))


# Logical names of the axes after the leading batch axis of batch fields, by field name (the
# data pipeline's layouts): a video batch's `video` is (batch, time, height, width, channels).
# A name with no rule in config.sharding_rules is not split (none has one by default), so
# these only act once a config maps them, e.g. sharding_rules + (('time', 'time'),) with a
# mesh axis `time` (config.mesh.time = 2) splits every clip's frames over 2 devices.
BATCH_FIELD_AXES = {"video": ("time", "height", "width", "channels")}


def batch_sharding(mesh: Mesh, rules, ndim: int, field: str | None = None) -> NamedSharding:
  """Batch arrays are split along their leading axis over the data-parallel mesh axes; the
  other axes of a field named in `BATCH_FIELD_AXES` (with that rank) follow the rules."""
  names = BATCH_FIELD_AXES.get(field, ())
  rest = (logical_to_spec(names, rules) if len(names) == ndim - 1 else [None] * (ndim - 1))
  return NamedSharding(mesh, PartitionSpec(batch_axes(rules), *rest))


def batch_shardings(mesh: Mesh, rules, shapes: dict[str, tuple[int, ...]]
                    ) -> dict[str, NamedSharding]:
  """{field: batch_sharding} of a batch given its fields' global shapes; a non-batch axis
  that its mesh axes do not divide raises ConfigError naming the fix."""
  out = {}
  for field, shape in shapes.items():
    out[field] = sharding = batch_sharding(mesh, rules, len(shape), field)
    for dim, (size, axes) in enumerate(zip(shape, sharding.spec)):
      if dim == 0 or axes is None:
        continue   # the batch axis is checked against the batch size (loop.validate_batch)
      parts = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
      if size % parts:
        raise ConfigError(f"batch field '{field}' of shape {tuple(shape)}: axis {dim} "
                          f"({BATCH_FIELD_AXES[field][dim - 1]}, {size}) cannot be split "
                          f"over mesh axes {axes} (size {parts}); change config.mesh or the "
                          f"data options")
  return out
