"""Multi-process start-up: `jax.distributed.initialize()` from the environment.

Recognised: TOKENLAB_DISTRIBUTED=1 (set by tokenlab's pod / GKE / SLURM launchers), Cloud TPU
pod slices (JAX detects them itself), SLURM (SLURM_NTASKS > 1), and
explicit flags / variables TOKENLAB_COORDINATOR, TOKENLAB_NUM_PROCESSES, TOKENLAB_PROCESS_ID
(what `launch/local.py` sets to rehearse a pod on one machine with CPU collectives).
"""

from __future__ import annotations

import os

import jax


def maybe_initialize() -> bool:
  """Initialises jax.distributed when the environment describes several processes."""
  env = os.environ
  if env.get("TOKENLAB_COORDINATOR"):
    if env.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=env["TOKENLAB_COORDINATOR"],
                               num_processes=int(env["TOKENLAB_NUM_PROCESSES"]),
                               process_id=int(env["TOKENLAB_PROCESS_ID"]))
    return True
  if (env.get("TOKENLAB_DISTRIBUTED") == "1" or int(env.get("SLURM_NTASKS", "1")) > 1
      or env.get("TPU_WORKER_HOSTNAMES", "").count(",")):
    jax.distributed.initialize()
    return True
  return False
