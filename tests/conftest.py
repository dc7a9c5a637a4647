"""Test setup: 4 fake CPU devices, so sharding and meshes are exercised on a laptop."""

import os

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A named Pallas implementation compiles its kernel unless asked to interpret; on this CPU the
# kernels run in the Pallas interpreter (tokenlab/kernels/_interpret.py). The TPU compile
# tests (tests/test_tpu_compile.py) unset it to prove the Mosaic kernel is what compiles.
os.environ.setdefault("TOKENLAB_PALLAS_INTERPRET", "1")
