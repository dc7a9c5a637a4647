"""TPU topologies without a TPU, and the published per-chip figures of each TPU generation.

libtpu (installed by `pip install 'jax[tpu]'`, and by the `test` extra) contains the TPU
compiler. `jax.experimental.topologies.get_topology_desc` gives the devices of any slice shape
it knows ("v5e:4x4", "v5p:4x4x4", "v4:2x2x1", "v6e:16x16", with `num_slices` for multi-slice
pods), and `jax.jit(f).lower(...).compile()` over them runs the real TPU compiler on a CPU-only
host: what `tokenlab plan --topology`, tests/test_tpu_compile.py and `tokenlab bench
tpu_compile` do. It works with `JAX_PLATFORMS=cpu` (this process computes on CPU and never
initialises a TPU backend, which keeps libtpu's start-up messages out of ordinary runs).

`CHIPS` is the one table of per-chip figures that roofline bounds use. Sources: the Cloud TPU
system-architecture pages (https://cloud.google.com/tpu/docs/v4, .../v5e, .../v5p,
.../v6e). ICI is the "interchip interconnect BW" of those pages in one direction (v5e 1600
Gbps, v5p 4800 Gbps, v6e 3584 Gbps); the v4 page gives no per-chip ICI figure, so v4's 270
GB/s (6 links x 45 GB/s one way) is from the JAX scaling book ("How to Scale Your Model",
TPU chapter) and is marked as such.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from tokenlab.errors import ConfigError, TokenlabError

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """Published peak figures of one TPU chip (not measurements)."""
  name: str
  bf16_flops: float       # peak bf16 FLOP/s per chip
  hbm_bytes: int          # HBM capacity per chip
  hbm_bytes_per_s: float  # HBM bandwidth per chip
  ici_bytes_per_s: float  # inter-chip interconnect bandwidth per chip, one direction
  device_kinds: tuple[str, ...]  # `device.device_kind` strings of this chip
  source: str


CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", 275e12, 32 * GiB, 1200e9, 270e9, ("TPU v4",),
                   "cloud.google.com/tpu/docs/v4 (ICI: JAX scaling book, 6 x 45 GB/s)"),
    "v5e": ChipSpec("v5e", 197e12, 16 * GiB, 819e9, 1600e9 / 8, ("TPU v5 lite", "TPU v5e"),
                    "cloud.google.com/tpu/docs/v5e"),
    "v5p": ChipSpec("v5p", 459e12, 95 * GiB, 2765e9, 4800e9 / 8, ("TPU v5", "TPU v5p"),
                    "cloud.google.com/tpu/docs/v5p"),
    "v6e": ChipSpec("v6e", 918e12, 32 * GiB, 1640e9, 3584e9 / 8, ("TPU v6 lite", "TPU v6e"),
                    "cloud.google.com/tpu/docs/v6e"),
}


def chip_of_topology(name: str) -> ChipSpec:
  """The chip of a topology name such as "v5e:4x4" (the part before the colon)."""
  gen = name.split(":", 1)[0].strip().lower()
  gen = {"v5litepod": "v5e", "v6litepod": "v6e"}.get(gen, gen)
  if gen not in CHIPS:
    from tokenlab.errors import nearest
    raise ConfigError(f"unknown TPU generation '{gen}' in topology '{name}'{nearest(gen, CHIPS)};"
                      f" known: {', '.join(CHIPS)} (e.g. v5e:4x4, v5p:2x2x2, v4:2x2x1)")
  return CHIPS[gen]


def chip_of_device(device: Any) -> ChipSpec | None:
  """The chip of a TPU device (None for other devices)."""
  kind = getattr(device, "device_kind", "")
  for spec in CHIPS.values():
    if kind in spec.device_kinds:
      return spec
  return None


def is_tpu(devices) -> bool:
  """Whether the devices are TPU devices (real ones or a topology's, compile-only)."""
  return bool(devices) and all(getattr(d, "platform", "") == "tpu" for d in devices)


@functools.lru_cache(maxsize=None)
def get_topology(name: str, num_slices: int = 1):
  """The TopologyDescription of `name` ("v5e:4x4", ...) with `num_slices` slices.

  Needs libtpu; runs without a TPU. Its `.devices` can build meshes and shardings that
  `jax.jit(...).lower(...).compile()` compiles for, but never run on.
  """
  chip_of_topology(name)
  if ":" not in name:
    raise ConfigError(f"topology '{name}' needs a slice shape, e.g. {name}:2x2 or {name}:4x4")
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    raise TokenlabError("compiling for a TPU topology needs libtpu: pip install 'jax[tpu]' "
                        "(the `test` extra installs it; Linux only)") from e
  # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; compiling
  # drives none, and another jax process on this host (a test worker, a CPU training run whose
  # jax probed the TPU plugin) may hold the lock. Read by libtpu when its plugin starts.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(topology_name=name, platform="tpu",
                                        num_slices=int(num_slices))
  except Exception as e:  # libtpu's message names the bad shape; keep it.
    raise ConfigError(f"libtpu does not know topology '{name}' (num_slices={num_slices}): "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; use the "
                      "names of the Cloud TPU docs, e.g. v5e:4x4, v6e:16x16, v5p:4x4x4, "
                      "v4:2x2x1") from e
