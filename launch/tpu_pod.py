#!/usr/bin/env python3
"""Run a tokenlab command on every worker of a Cloud TPU VM slice, with gcloud.

  python launch/tpu_pod.py --name lm-1b --zone us-west4-a --accelerator-type v5litepod-16 \\
      --spot --dry-run -- tokenlab train --config experiments/transformer_lm.py:size=1b \\
      --workdir gs://my-bucket/runs/lm-1b

Steps (each a gcloud command; `--dry-run` prints them and runs nothing):
  1. create the TPU VM slice (skipped with --skip-create),
  2. copy this checkout to every worker (a `git archive` of HEAD) or clone --repo there,
  3. install it with `pip install -e '.[tpu]'` in a venv on every worker,
  4. run the same command on every worker at once (`--worker=all`); each process finds the
     others through the TPU metadata (`jax.distributed.initialize()` with no arguments),
     and its output goes to ~/tokenlab_run.log on that worker,
  5. copy each worker's log back to --log-dir/worker_I.log,
  6. delete the slice (only with --delete).

The workdir must be shared storage (gs://..., written through etils.epath, or a gcsfuse
mount): every process writes its part of the orbax checkpoint there. A preempted spot slice sends SIGTERM: the trainer saves and exits 0, and
running this again (with --skip-create once the slice is back) resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import Sequence

try:
  from launch._tpu import parse_slice
except ImportError:  # Run as a script: launch/ is sys.path[0].
  from _tpu import parse_slice

REMOTE_DIR = "$HOME/tokenlab"
REMOTE_VENV = "$HOME/tokenlab-venv"
REMOTE_LOG = "~/tokenlab_run.log"
ARCHIVE = "/tmp/tokenlab-src.tar.gz"


def requires_python(source: str = ".") -> tuple[int, int]:
  """The lowest Python (major, minor) that pyproject.toml's requires-python allows."""
  path = os.path.join(source, "pyproject.toml")
  if not os.path.exists(path):   # --repo without a local checkout: this file's checkout.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "pyproject.toml")
  with open(path) as f:
    m = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)', f.read())
  return (int(m.group(1)), int(m.group(2))) if m else (3, 11)


def python_setup(minimum: tuple[int, int]) -> str:
  """Shell that sets $PY to a Python >= minimum on the worker. TPU VM images ship an older
  python3 (Ubuntu 22.04: 3.10); then python3.X from the deadsnakes PPA is installed with apt.
  Fails with the fix when neither works."""
  major, minor = minimum
  want = f"{major}.{minor}"
  candidates = " ".join(f"python{major}.{m}" for m in range(minor + 4, minor - 1, -1))
  ok = f"-c 'import sys; sys.exit(sys.version_info < ({major}, {minor}))'"
  return (f'PY=""; for c in {candidates} python3; do '
          f'if command -v $c >/dev/null 2>&1 && $c {ok} 2>/dev/null; then PY=$c; break; fi; '
          f'done; if [ -z "$PY" ]; then echo "tokenlab needs Python >= {want}; installing '
          f'python{want} (deadsnakes PPA)"; sudo apt-get update -qq && sudo apt-get install '
          f'-y -qq software-properties-common && sudo add-apt-repository -y ppa:deadsnakes/ppa '
          f'&& sudo apt-get update -qq && sudo apt-get install -y -qq python{want} '
          f'python{want}-venv && PY=python{want}; fi; if [ -z "$PY" ]; then echo "no Python '
          f'>= {want} on this worker: choose a newer --version image or install python{want}"'
          f' >&2; exit 1; fi')


def _tpu(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def _remote_training(command: Sequence[str]) -> str:
  """The shell line every worker runs: the venv's tokenlab, output teed to the log."""
  command = list(command)
  if command and command[0] == "tokenlab":
    command[0] = f"{REMOTE_VENV}/bin/tokenlab"
  # TOKENLAB_DISTRIBUTED=1 asks for jax.distributed.initialize() from the TPU metadata.
  return (f"cd {REMOTE_DIR} && export TOKENLAB_DISTRIBUTED=1 && "
          f"{' '.join(shlex.quote(c) if not c.startswith(REMOTE_VENV) else c for c in command)}"
          f" 2>&1 | tee {REMOTE_LOG}; exit ${{PIPESTATUS[0]}}")


def build_commands(args: argparse.Namespace, command: Sequence[str]
                   ) -> list[tuple[str, list[str]]]:
  """(phase, command) pairs of the whole run, in order; phases: create, copy, install, run,
  logs, delete."""
  s = parse_slice(args.accelerator_type)
  cmds: list[tuple[str, list[str]]] = []
  if not args.skip_create:
    create = _tpu(args, "create", args.name, f"--accelerator-type={args.accelerator_type}",
                  f"--version={args.version or s.runtime_version}")
    if args.spot:
      create.append("--spot")
    cmds.append(("create", create))
  if args.repo:
    fetch = (f"rm -rf {REMOTE_DIR} && git clone --depth 1 --branch {shlex.quote(args.branch)}"
             f" {shlex.quote(args.repo)} {REMOTE_DIR}")
    cmds.append(("copy", _tpu(args, "ssh", args.name, "--worker=all", f"--command={fetch}")))
  else:
    cmds.append(("copy", ["git", "-C", args.source, "archive", "--format=tar.gz",
                          f"--output={ARCHIVE}", "HEAD"]))
    cmds.append(("copy", _tpu(args, "scp", ARCHIVE, f"{args.name}:{ARCHIVE}", "--worker=all")))
    unpack = f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf {ARCHIVE} -C {REMOTE_DIR}"
    cmds.append(("copy", _tpu(args, "ssh", args.name, "--worker=all", f"--command={unpack}")))
  install = (f"{python_setup(requires_python(args.source))} && "
             f"$PY -m venv {REMOTE_VENV} && {REMOTE_VENV}/bin/pip install -q -U pip && "
             f"{REMOTE_VENV}/bin/pip install -q -e \"{REMOTE_DIR}[tpu]\"")
  cmds.append(("install", _tpu(args, "ssh", args.name, "--worker=all", f"--command={install}")))
  cmds.append(("run", _tpu(args, "ssh", args.name, "--worker=all",
                           f"--command={_remote_training(command)}")))
  for i in range(s.hosts):
    cmds.append(("logs", _tpu(args, "scp", f"{args.name}:{REMOTE_LOG}",
                              os.path.join(args.log_dir, f"worker_{i}.log"), f"--worker={i}")))
  if args.delete:
    cmds.append(("delete", _tpu(args, "delete", args.name, "--quiet")))
  return cmds


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  argv = list(argv)
  split = argv.index("--") if "--" in argv else len(argv)
  own, command = argv[:split], argv[split + 1:]
  p = argparse.ArgumentParser(prog="launch/tpu_pod.py", description=__doc__.splitlines()[0],
                              usage="%(prog)s [options] -- COMMAND ...")
  p.add_argument("--name", required=True, help="TPU VM (slice) name")
  p.add_argument("--zone", required=True)
  p.add_argument("--accelerator-type", required=True, help="e.g. v5litepod-16, v6e-32, v5p-64")
  p.add_argument("--project", default="")
  p.add_argument("--version", default="", help="TPU software version (default: per family)")
  p.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")
  p.add_argument("--repo", default="", help="git URL to clone on the workers instead of "
                 "copying this checkout")
  p.add_argument("--branch", default="main")
  p.add_argument("--source", default=".", help="local checkout to copy (git archive HEAD)")
  p.add_argument("--log-dir", default="logs/tpu_pod")
  p.add_argument("--skip-create", action="store_true", help="the slice exists already")
  p.add_argument("--delete", action="store_true", help="delete the slice at the end")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args(own)
  if not command:
    p.error("give the command after `--`, e.g. -- tokenlab train --config ... "
            "--workdir gs://bucket/run")
  return args, command


def main(argv: Sequence[str] | None = None) -> int:
  args, command = parse_args(sys.argv[1:] if argv is None else argv)
  cmds = build_commands(args, command)
  workdir = next((command[i + 1] for i, c in enumerate(command[:-1]) if c == "--workdir"), "")
  if workdir and not workdir.startswith("gs://"):
    print(f"# warning: --workdir {workdir} is not a gs:// URL; every worker needs the same "
          f"checkpoint directory (use gs://... or a gcsfuse mount on every worker)",
          file=sys.stderr)
  if args.dry_run:
    for phase, c in cmds:
      print(f"{shlex.join(c)}  # {phase}")
    return 0
  os.makedirs(args.log_dir, exist_ok=True)
  status = 0
  for phase, c in cmds:
    # After a failed run, still collect the logs (they say why) and delete if asked.
    if status and phase not in ("logs", "delete"):
      continue
    print(f"+ [{phase}] {shlex.join(c)}", flush=True)
    code = subprocess.call(c)
    if code and not status:
      print(f"launch/tpu_pod.py: {phase} failed with exit status {code}: {shlex.join(c)}",
            file=sys.stderr)
      status = code
  return status


if __name__ == "__main__":
  sys.exit(main())
