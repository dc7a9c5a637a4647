"""The device mesh, built from `config.mesh` (axis name -> size; -1 = the remaining devices).

On TPU the mesh follows the physical topology (`jax.experimental.mesh_utils` semantics, as
`jax.make_mesh` does): neighbouring mesh positions are neighbouring chips on the ICI torus, so
collectives over one mesh axis ride the links. A mesh shape the topology cannot hold fails with
mesh_utils' reason instead of silently falling back to a plain reshape (which would still run,
slowly, with collectives hopping across the torus).

Multi-slice pods: `config.mesh_dcn` gives each axis's size over the data-center network, e.g.
`mesh_dcn.data = 2` on two slices. The mesh axis then spans `mesh_dcn[a]` slices times
`mesh[a] / mesh_dcn[a]` chips per slice (`mesh_utils.create_hybrid_device_mesh`): slices are
the outer part of that axis and every other axis stays inside a slice, so only that axis's
collectives cross DCN.

Axis types are stated, not left to the jax default (which became Explicit for
`jax.make_mesh`): the trainer shards with logical axis rules and sharding constraints, i.e.
`AxisType.Auto` (GSPMD propagation).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

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


def dcn_shape(dcn_cfg, sizes: dict[str, int]) -> dict[str, int]:
  """Per-axis DCN sizes (1 where `dcn_cfg` names none), checked against the mesh sizes."""
  dcn = {str(k): int(v) for k, v in dict(dcn_cfg or {}).items()}
  # Axes at 1 are "not over DCN" whatever the mesh has (the defaults name data/fsdp/tensor).
  unknown = sorted(k for k, v in dcn.items() if k not in sizes and v != 1)
  if unknown:
    raise ConfigError(f"config.mesh_dcn names axes {unknown} that config.mesh {sizes} lacks; "
                      f"use mesh axes ({', '.join(sizes)})")
  out = {}
  for name, size in sizes.items():
    d = dcn.get(name, 1)
    if d < 1 or size % d:
      raise ConfigError(f"config.mesh_dcn.{name}={d} must be >= 1 and divide "
                        f"config.mesh.{name}={size} (the axis is {d} slices x {size} / {d} "
                        "devices per slice)")
    out[name] = d
  return out


def _num_slices(devices) -> int:
  return len({getattr(d, "slice_index", 0) for d in devices})


def _tpu_grid(ici: tuple[int, ...], dcn: tuple[int, ...], devices) -> np.ndarray:
  """mesh_utils' topology-aware device grid, or a ConfigError with its reason.

  Physical axes may be split (e.g. mesh (2, 8) on a 4x4 slice), as `jax.make_mesh` allows:
  the grid still follows the torus, it is not a reshape of the device list.
  """
  from jax.experimental import mesh_utils
  slices = _num_slices(devices)
  if math.prod(dcn) != slices:
    raise ConfigError(f"config.mesh_dcn {dcn} spans {math.prod(dcn)} slice(s) but the "
                      f"{len(devices)} devices come from {slices}; set config.mesh_dcn so its "
                      f"sizes multiply to {slices} (e.g. --config.mesh_dcn.data={slices})")
  try:
    if slices > 1:
      return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                  allow_split_physical_axes=True)
    return mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError) as e:
    raise ConfigError(f"cannot lay mesh {tuple(a * b for a, b in zip(ici, dcn))} (per slice "
                      f"{ici}, slices {dcn}) onto the TPU topology of {len(devices)} "
                      f"{devices[0].device_kind} devices: {e}. Pick axis sizes that follow the "
                      "slice's shape (e.g. 4x4 chips: mesh sizes 16, 4x4 or 2x8)") from e


def _plain_grid(ici: tuple[int, ...], dcn: tuple[int, ...], devices) -> np.ndarray:
  """Devices in order, DCN part outermost on each axis (CPU and GPU: no torus to follow)."""
  n = len(ici)
  grid = np.asarray(devices, dtype=object).reshape(dcn + ici)
  # (d0..dn, i0..in) -> (d0, i0, d1, i1, ...) -> axis k = dcn_k * ici_k, slice-major.
  order = [a for k in range(n) for a in (k, n + k)]
  return grid.transpose(order).reshape(tuple(d * i for d, i in zip(dcn, ici)))


def make_mesh(mesh_cfg, devices: list | None = None, dcn_cfg=None) -> Mesh:
  """A Mesh with the axes of `mesh_cfg`, in its order, over all (or the given) devices.

  Args:
    mesh_cfg: axis name -> size (-1 = the rest), e.g. config.mesh.
    devices: the devices (default: jax.devices()); TPU devices may be a topology's
      (`tokenlab.topology.get_topology`), for compilation without a TPU.
    dcn_cfg: axis name -> number of slices that axis spans (config.mesh_dcn); default 1.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(mesh_cfg, len(devices))
  dcn_sizes = dcn_shape(dcn_cfg, sizes)
  dcn = tuple(dcn_sizes.values())
  ici = tuple(s // d for s, d in zip(sizes.values(), dcn))
  from tokenlab.topology import is_tpu
  if is_tpu(devices):
    grid = _tpu_grid(ici, dcn, devices)
  else:
    grid = _plain_grid(ici, dcn, devices)
  return Mesh(grid, tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))
