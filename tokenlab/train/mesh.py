"""The device mesh, built from `config.mesh` (axis name -> size; -1 = the remaining devices)."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh

from tokenlab.errors import ConfigError


def mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
  """Resolves -1 in `mesh_cfg` so the sizes multiply to `num_devices`."""
  sizes = {str(k): int(v) for k, v in dict(mesh_cfg).items()}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ConfigError(f"config.mesh has -1 on {free}; at most one axis may take the rest")
  if any(v == 0 or v < -1 for v in sizes.values()):
    raise ConfigError(f"config.mesh sizes must be positive or -1, got {sizes}")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"config.mesh {sizes} needs a multiple of {fixed} devices, but "
                        f"{num_devices} are available; change the fixed axis sizes")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(f"config.mesh {sizes} uses {fixed} devices but {num_devices} are "
                      f"available; set one axis to -1 (e.g. --config.mesh.data=-1)")
  return sizes


def make_mesh(mesh_cfg, devices: list | None = None) -> Mesh:
  """A Mesh with the axes of `mesh_cfg`, in its order, over all (or the given) devices."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(mesh_cfg, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(tuple(sizes.values()), devices=devices)
  except Exception:  # Topologies mesh_utils does not know (e.g. fake CPU devices subsets).
    grid = np.asarray(devices).reshape(tuple(sizes.values()))
  return Mesh(grid, tuple(sizes))
