"""The platform a program is being compiled for, as kernels choose their default by it.

`jax.default_backend()` is the platform this process computes on; a program lowered ahead of
time for a TPU topology from a CPU host (`tokenlab plan --topology`, tests/test_tpu_compile.py)
targets another one. Under `jax.set_mesh(mesh)` (what the trainer, `plan` and `sample` do) the
abstract mesh seen while tracing names its devices' platform, so that is the target; without
a mesh the target is the default backend.
"""

from __future__ import annotations

import jax


def target_platform() -> str:
  """"tpu", "gpu", "cpu", ... of the current mesh's devices, else of the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  platform = getattr(device, "platform", None)
  if platform:
    return "gpu" if platform in ("cuda", "rocm") else str(platform)
  return jax.default_backend()
