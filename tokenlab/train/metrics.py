"""Metrics: WORKDIR/metrics.jsonl, TensorBoard events under WORKDIR/tb/, peak FLOP/s for MFU.

metrics.jsonl holds one JSON object per logged step: {"step": N, "train/loss": ...,
"eval/loss": ..., "perf/tokens_per_sec": ..., "perf/mfu": ...}. It is strict JSON: a
non-finite value is written as null and named in the row's "nonfinite" field
({"train/loss": "nan"}). Each row is one write(2) of a whole line to a file opened for
appending, so rows never interleave; a partial last line (a crash mid-write) is removed with a
warning before a run appends (`repair_metrics`) and skipped with a warning by readers. A
resumed run may log a step again (it restarted from an earlier checkpoint): for readers the
last write of a (step, metric) wins (`latest_by_step`).

In a remote workdir (gs://..., any `etils.epath` URL) objects cannot be appended to: the
writer keeps the file's bytes and writes the whole object again with each row (metrics files
are small), and TensorBoard events are written to a local directory and copied to WORKDIR/tb
after each flush.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

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


def _host_key() -> str:
  """The cache key of this host's CPU peak: backend, device kind, core count, CPU model."""
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    pass
  return f"{jax.default_backend()}:{jax.local_devices()[0].device_kind}:{os.cpu_count()}:{model}"


def peak_flops(cache_dir: str | None = None, remeasure: bool = False) -> tuple[float, str]:
  """Peak FLOP/s of all local devices together and how it was obtained.

  Accelerators: the published per-chip figure times the device count. CPU: a large float32
  matmul measured once per host (CPU model and core count) and cached; `remeasure` measures
  again and keeps the best (fake CPU devices share the same cores, so the host's peak is the
  peak of all of them together). `tokenlab bench trainer` measures its own peak in the run.
  """
  devices = jax.local_devices()
  kind = devices[0].device_kind
  for name, flops in KNOWN_PEAK_FLOPS.items():
    if kind.startswith(name):
      return flops * len(devices), f"published peak of {kind} x {len(devices)}"
  cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tokenlab")
  path = os.path.join(cache_dir, "peak_flops.json")
  key = _host_key()
  cache = {}
  if os.path.exists(path):
    try:
      cache = json.loads(open(path).read())
    except ValueError:
      cache = {}
  # Measured when this host has no figure yet, not at every start: the measurement (six
  # 2048^3 matmuls on every core) cost about a second of both cores per run, in every test
  # and reproduction arm. The best measurement is kept: one on a busy machine would otherwise
  # understate the peak (and overstate MFU) for good.
  if remeasure or key not in cache:
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
    from tokenlab.train.workdir import is_remote, join
    self.enabled = enabled
    self.path = join(workdir, "metrics.jsonl")
    self._remote = is_remote(workdir)
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      tb_dir = join(workdir, "tb")
      if self._remote:
        import tempfile
        self._tb_remote, tb_dir = epath.Path(tb_dir), tempfile.mkdtemp(prefix="tokenlab-tb-")
        self._contents = (epath.Path(self.path).read_bytes()
                          if epath.Path(self.path).exists() else b"")
      self._tb = SummaryWriter(tb_dir)

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    nonfinite = {}
    for k, v in sorted(scalars.items()):
      v = _py(v)
      if isinstance(v, float) and not math.isfinite(v):
        nonfinite[k] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        v = None
      row[k] = v
    if nonfinite:
      row["nonfinite"] = nonfinite
    line = (json.dumps(row, allow_nan=False) + "\n").encode()
    if self._remote:
      self._contents += line
      epath.Path(self.path).write_bytes(self._contents)
      self._write_tb(row, step)
      return
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      written = os.write(fd, line)   # one write of the whole line: rows never interleave
      if written != len(line):
        raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
    finally:
      os.close(fd)
    self._write_tb(row, step)

  def _write_tb(self, row: dict[str, Any], step: int) -> None:
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()
    if self._remote:   # copy the local event files to WORKDIR/tb
      self._tb_remote.mkdir(parents=True, exist_ok=True)
      for f in epath.Path(self._tb.logdir).iterdir():
        self._tb_remote.joinpath(f.name).write_bytes(f.read_bytes())

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      if self._remote:
        import shutil
        shutil.rmtree(self._tb.logdir, ignore_errors=True)


def _py(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    return v.item()
  return v


def repair_metrics(workdir: str) -> None:
  """Moves a partial last line of WORKDIR/metrics.jsonl (a crash mid-write) to
  metrics.jsonl.partial, saying so on stderr, so that a resumed run does not append onto it.
  Whole lines are never touched."""
  from tokenlab.train.workdir import is_remote, join
  path = join(workdir, "metrics.jsonl")
  if is_remote(workdir):
    return _repair_remote(epath.Path(path))
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(max(size - 1, 0))
    if f.read(1) == b"\n":
      return
    cut = size                  # back to the last newline: where the partial line starts
    while cut > 0:
      start = max(cut - 65536, 0)
      f.seek(start)
      chunk = f.read(cut - start)
      if b"\n" in chunk:
        cut = start + chunk.rfind(b"\n") + 1
        break
      cut = start
    f.seek(cut)
    partial = f.read()
    try:     # A complete row that only lacks its newline is kept.
      json.loads(partial)
      f.write(b"\n")
      return
    except ValueError:
      pass
    with open(path + ".partial", "ab") as kept:   # kept, not lost
      kept.write(partial + b"\n")
    f.truncate(cut)
  print(f"tokenlab: warning: {path}: moved a partial last line ({len(partial)} bytes, from an "
        f"interrupted write) to metrics.jsonl.partial", file=sys.stderr)


def _repair_remote(path: epath.Path) -> None:
  """`repair_metrics` for an object: read whole, rewritten whole."""
  data = path.read_bytes() if path.exists() else b""
  if not data or data.endswith(b"\n"):
    return
  cut = data.rfind(b"\n") + 1
  partial = data[cut:]
  try:
    json.loads(partial)
    path.write_bytes(data + b"\n")
    return
  except ValueError:
    pass
  kept = epath.Path(str(path) + ".partial")
  kept.write_bytes((kept.read_bytes() if kept.exists() else b"") + partial + b"\n")
  path.write_bytes(data[:cut])
  print(f"tokenlab: warning: {path}: moved a partial last line ({len(partial)} bytes, from an "
        f"interrupted write) to metrics.jsonl.partial", file=sys.stderr)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of WORKDIR/metrics.jsonl in file order ([] if there is none). A line that is
  not a JSON object (a partial line from a crash mid-write) is skipped with a warning."""
  from tokenlab.train.workdir import join
  path = join(workdir, "metrics.jsonl")
  if not epath.Path(path).exists():
    return []
  rows, bad = [], []
  with epath.Path(path).open("rb") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError:
        row = None
      if isinstance(row, dict) and isinstance(row.get("step"), int):
        rows.append(row)
      else:
        bad.append(number)
  if bad:
    print(f"tokenlab: warning: {path}: skipped {len(bad)} line(s) that are not complete rows "
          f"(line {', '.join(map(str, bad[:5]))}{'...' if len(bad) > 5 else ''}; a crash "
          f"mid-write leaves one)", file=sys.stderr)
  return rows


def latest_by_step(rows: list[dict[str, Any]]) -> dict[str, dict[int, Any]]:
  """{metric: {step: value}} where the last write of a (step, metric) wins: a resumed run that
  logs a step again replaces what the earlier attempt logged."""
  out: dict[str, dict[int, Any]] = {}
  for row in rows:
    for key, value in row.items():
      if key not in ("step", "nonfinite"):
        out.setdefault(key, {})[int(row["step"])] = value
  return out
