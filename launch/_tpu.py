"""Cloud TPU slice names -> chips, hosts and GKE labels (shared by tpu_pod.py and gke.py).

Naming conventions (Cloud TPU docs): the number in `v4-N` and `v5p-N` counts TensorCores
(2 per chip); in `v5litepod-N` (v5e) and `v6e-N` it counts chips. Multi-host slices have
4 chips per VM; v5e / v6e slices of up to 8 chips fit one VM.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str   # e.g. v5litepod-16
  family: str             # v4 | v5p | v5e | v6e
  chips: int
  hosts: int
  chips_per_host: int
  gke_accelerator: str    # node selector cloud.google.com/gke-tpu-accelerator
  topology: str           # node selector cloud.google.com/gke-tpu-topology
  runtime_version: str    # default TPU VM software version for `gcloud ... create`


_FAMILIES = {
    # prefix: (family, counts cores?, gke accelerator, runtime version)
    "v4": ("v4", True, "tpu-v4-podslice", "tpu-ubuntu2204-base"),
    "v5p": ("v5p", True, "tpu-v5p-slice", "v2-alpha-tpuv5"),
    "v5litepod": ("v5e", False, "tpu-v5-lite-podslice", "v2-alpha-tpuv5-lite"),
    "v6e": ("v6e", False, "tpu-v6e-slice", "v2-alpha-tpuv6e"),
}

_TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
                256: "16x16"}
_TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
                256: "4x8x8", 512: "8x8x8"}


def parse_slice(accelerator_type: str, topology: str = "") -> Slice:
  """'v5litepod-16' -> Slice(chips=16, hosts=4, ...); raises SystemExit naming valid forms."""
  m = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type)
  if not m:
    raise SystemExit(f"unknown --accelerator-type '{accelerator_type}'; use e.g. v5litepod-16, "
                     f"v6e-32, v5p-64 or v4-32")
  family, counts_cores, gke, runtime = _FAMILIES[m.group(1)]
  n = int(m.group(2))
  chips = n // 2 if counts_cores else n
  if chips < 1:
    raise SystemExit(f"--accelerator-type '{accelerator_type}' has no whole chip")
  single_host = 8 if family in ("v5e", "v6e") else 4
  per_host = chips if chips <= single_host else 4
  if chips % per_host:
    raise SystemExit(f"{accelerator_type}: {chips} chips do not split into hosts of {per_host}")
  table = _TOPOLOGY_3D if family in ("v4", "v5p") else _TOPOLOGY_2D
  topo = topology or table.get(chips, "")
  if not topo:
    raise SystemExit(f"no default topology for {chips} {family} chips; pass --topology")
  return Slice(accelerator_type, family, chips, chips // per_host, per_host, gke, topo, runtime)
