#!/usr/bin/env python3
"""Rehearse a pod run on one machine: N processes x M fake CPU devices with CPU collectives.

  python launch/local.py --processes 2 --devices-per-process 2 -- \\
      tokenlab train --config experiments/transformer_lm.py:size=tiny --workdir runs/mp

Each process gets the environment `tokenlab.train.distributed.maybe_initialize` reads:
TOKENLAB_COORDINATOR (localhost:PORT, process 0 serves it), TOKENLAB_NUM_PROCESSES,
TOKENLAB_PROCESS_ID, plus JAX_PLATFORMS=cpu and
XLA_FLAGS=--xla_force_host_platform_device_count=M, so jax sees N*M global devices, M local.
Every output line is printed with a `[pI]` prefix (and kept in --log-dir/process_I.log when
given). When one process fails, the others are stopped (they would otherwise wait forever in
a collective) and the launcher exits with the failing process's status, naming it.
SIGTERM / SIGINT to the launcher is forwarded to every process, as a pod's preemption would
reach every worker: the trainer saves at the next step boundary and exits 0.

A leading `tokenlab` in the command runs as `<this python> -m tokenlab.cli`, so the launcher
works from a virtual environment that is not on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO


def free_port() -> int:
  """A TCP port that is free on localhost right now (the coordinator binds it next)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def with_device_count(xla_flags: str, devices: int) -> str:
  """XLA_FLAGS with --xla_force_host_platform_device_count=devices (other flags kept)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", xla_flags).split()
  return " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])


def process_env(process_id: int, processes: int, devices_per_process: int, coordinator: str,
                base: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of process `process_id` of `processes`."""
  env = dict(os.environ if base is None else base)
  env.update({
      "TOKENLAB_COORDINATOR": coordinator,
      "TOKENLAB_NUM_PROCESSES": str(processes),
      "TOKENLAB_PROCESS_ID": str(process_id),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": with_device_count(env.get("XLA_FLAGS", ""), devices_per_process),
      # Children print as they go, so interleaved lines arrive when they happen.
      "PYTHONUNBUFFERED": "1",
  })
  return env


def resolve_command(command: Sequence[str]) -> list[str]:
  """`tokenlab ...` -> `<python> -m tokenlab.cli ...`; anything else is run as given."""
  command = list(command)
  if command and command[0] == "tokenlab":
    return [sys.executable, "-m", "tokenlab.cli", *command[1:]]
  return command


def _pump(index: int, stream, out: TextIO, lock: threading.Lock, log: TextIO | None) -> None:
  for raw in iter(stream.readline, b""):
    line = raw.decode("utf-8", errors="replace").rstrip("\n")
    with lock:
      out.write(f"[p{index}] {line}\n")
      out.flush()
    if log is not None:
      log.write(line + "\n")
      log.flush()
  stream.close()


def run_local(command: Sequence[str], processes: int, devices_per_process: int, *,
              port: int = 0, log_dir: str = "", timeout: float = 0.0, grace: float = 10.0,
              out: TextIO | None = None) -> int:
  """Runs `command` as `processes` cooperating jax processes; returns the exit status.

  0 when every process exits 0; otherwise the status of the first process that failed (a
  timeout counts as 124), after stopping the others.
  """
  if processes < 1 or devices_per_process < 1:
    raise SystemExit("launch/local.py: --processes and --devices-per-process must be >= 1")
  if not command:
    raise SystemExit("launch/local.py: give the command after `--`, e.g. "
                     "-- tokenlab train --config experiments/transformer_lm.py:size=tiny")
  out = out or sys.stdout
  coordinator = f"localhost:{port or free_port()}"
  argv = resolve_command(command)
  lock = threading.Lock()
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  procs: list[subprocess.Popen] = []
  pumps: list[threading.Thread] = []
  logs: list[TextIO] = []
  with lock:
    out.write(f"launch/local.py: {processes} processes x {devices_per_process} CPU devices, "
              f"coordinator {coordinator}: {' '.join(command)}\n")
    out.flush()
  for i in range(processes):
    log = open(os.path.join(log_dir, f"process_{i}.log"), "w") if log_dir else None
    if log is not None:
      logs.append(log)
    p = subprocess.Popen(argv, env=process_env(i, processes, devices_per_process, coordinator),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    procs.append(p)
    t = threading.Thread(target=_pump, args=(i, p.stdout, out, lock, log), daemon=True)
    t.start()
    pumps.append(t)

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  previous = {}
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      previous[sig] = signal.signal(sig, forward)

  status, failed = 0, None
  start = time.monotonic()
  try:
    while True:
      codes = [p.poll() for p in procs]
      bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if bad:
        failed, status = bad[0]
        break
      if all(c == 0 for c in codes):
        break
      if timeout and time.monotonic() - start > timeout:
        failed, status = -1, 124
        break
      time.sleep(0.05)
    if failed is not None:
      _stop(procs, grace)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for p in procs:
      if p.poll() is None:
        _stop([p], 0.0)
    for t in pumps:
      t.join(timeout=5.0)
    for log in logs:
      log.close()
  with lock:
    if failed == -1:
      out.write(f"launch/local.py: timed out after {timeout:.0f} s; stopped all processes\n")
    elif failed is not None:
      out.write(f"launch/local.py: process {failed} failed with exit status {status}; "
                f"stopped the others (see its lines prefixed [p{failed}])\n")
    out.flush()
  return status


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
  """SIGTERM the running processes, then SIGKILL those still alive after `grace` seconds."""
  for p in procs:
    if p.poll() is None:
      _signal_group(p, signal.SIGTERM)
  deadline = time.monotonic() + grace
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
      _signal_group(p, signal.SIGKILL)
      p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
  # Each child leads its own session (start_new_session), so this reaches its children too.
  try:
    os.killpg(p.pid, sig)
  except ProcessLookupError:
    pass


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" in argv:
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
  else:
    own, command = argv, []
  parser = argparse.ArgumentParser(prog="launch/local.py", description=__doc__.splitlines()[0],
                                   usage="%(prog)s [options] -- COMMAND ...")
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=1)
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = a free one)")
  parser.add_argument("--log-dir", default="", help="also write process_I.log files here")
  parser.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = none")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds the others get to exit after one fails")
  args = parser.parse_args(own)
  return run_local(command, args.processes, args.devices_per_process, port=args.port,
                   log_dir=args.log_dir, timeout=args.timeout, grace=args.grace)


if __name__ == "__main__":
  sys.exit(main())
