"""Metrics: WORKDIR/metrics.jsonl, TensorBoard events under WORKDIR/tb/, peak FLOP/s for MFU.

metrics.jsonl holds one JSON object per logged step: {"step": N, "train/loss": ...,
"eval/loss": ..., "perf/tokens_per_sec": ..., "perf/mfu": ...}.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.method import Average

# Dense bf16 peak FLOP/s per chip for accelerators whose figure is published.
KNOWN_PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def reduce_metrics(per_step: list[dict[str, Average]]) -> dict[str, float]:
  """Sums (total, count) over steps and returns total / count per metric; a metric with no
  observations (count 0, e.g. concept accuracy on text without concepts) is left out."""
  per_step = jax.device_get(per_step)
  out = {}
  for key in per_step[0]:
    total = sum(float(m[key].total) for m in per_step)
    count = sum(float(m[key].count) for m in per_step)
    if count:
      out[key] = total / count
  return out


def measure_matmul_peak(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """FLOP/s of the best of `repeats` large matmuls on the default device: a measured peak."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def peak_flops(cache_dir: str | None = None) -> tuple[float, str]:
  """Peak FLOP/s of all local devices together and how it was obtained.

  Accelerators: the published per-chip figure times the device count. CPU: a large float32
  matmul, measured at every start, the best measurement kept in a cache (fake CPU devices
  share the same cores, so the host's peak is the peak of all of them together).
  """
  devices = jax.local_devices()
  kind = devices[0].device_kind
  for name, flops in KNOWN_PEAK_FLOPS.items():
    if kind.startswith(name):
      return flops * len(devices), f"published peak of {kind} x {len(devices)}"
  cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tokenlab")
  path = os.path.join(cache_dir, "peak_flops.json")
  key = f"{jax.default_backend()}:{kind}:{os.cpu_count()}"
  cache = {}
  if os.path.exists(path):
    try:
      cache = json.loads(open(path).read())
    except ValueError:
      cache = {}
  # Measured every run and the best kept: one measurement on a busy machine would otherwise
  # understate the peak (and overstate MFU) for good.
  measured = measure_matmul_peak()
  if measured > cache.get(key, 0.0):
    cache[key] = measured
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(cache, f)
    os.replace(tmp, path)
  scale = 1 if jax.default_backend() == "cpu" else len(devices)
  return cache[key] * scale, f"measured 2048^3 float32 matmul on {kind}, cached in {path}"


class MetricsWriter:
  """Appends to metrics.jsonl and writes TensorBoard scalars (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _py(v) for k, v in sorted(scalars.items())})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _py(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    return v.item()
  return v


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
