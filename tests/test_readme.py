"""README as a tested contract: every command it shows runs as written (shrunk to tiny runs).

Commands come from README.md's ```bash blocks (continuation lines joined, `&&` chains split),
from transcript blocks (lines starting with `$ `, whose shown output must appear), and from
inline `tokenlab ...` quotes. They run in order, in one temporary directory, with the installed
`tokenlab` and $TOKENLAB_CONFIG_OVERRIDES shrinking every training run to a couple of steps:
README keeps showing the real commands. How each kind of command is shrunk is the table
`_shrink` below; a command it does not know fails the test, so a new command cannot land in
README untested. A synopsis (`tokenlab repro NAME`, `tokenlab plan`) is checked against the
subcommand's --help: the subcommand exists and knows every flag shown.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SHRINK = ("train.steps=2 train.eval_batches=1 train.eval_every=0 train.log_every=1 "
          "checkpoint.every_steps=2 checkpoint.async_save=false")
SETUP = object()   # README's own set-up steps, already done by whoever runs this suite
SYNOPSIS = object()


def readme_commands(text: str) -> list[tuple[list[str], list[str]]]:
  """[(argv, expected output lines)] in README order (see the module docstring)."""
  out: list[tuple[list[str], list[str]]] = []
  pos = 0
  fence = re.compile(r"```([a-z]*)\n(.*?)```", re.S)
  for m in fence.finditer(text):
    out += _inline(text[pos:m.start()])
    pos = m.end()
    lang, body = m.group(1), m.group(2)
    if lang == "bash":
      body = re.sub(r"\\\n\s*", " ", body)
      for line in body.splitlines():
        words = shlex.split(line, comments=True)
        while words:
          cut = words.index("&&") if "&&" in words else len(words)
          out.append((words[:cut], []))
          words = words[cut + 1:]
    elif not lang and body.lstrip().startswith("$ "):
      lines = body.strip().splitlines()
      i = 0
      while i < len(lines):
        cmd = shlex.split(lines[i][2:], comments=True)
        shown = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
          shown.append(lines[i])
          i += 1
        out.append((cmd, shown))
  out += _inline(text[pos:])
  return out


def _inline(prose: str) -> list[tuple[list[str], list[str]]]:
  found = re.findall(r"`((?:time )?tokenlab [a-z][^`]*)`", prose.replace("\n", " "))
  return [(shlex.split(c), []) for c in found]


def _synopsis(argv: list[str]) -> bool:
  return len(argv) == 2 or any(re.fullmatch(r"[A-Z]{2,}|\[.*|.*\]", a) for a in argv[2:])


def _shrink(argv: list[str], tmp: str):
  """The command to run for README's argv, SETUP, SYNOPSIS, or raises for an unknown one."""
  argv = [a.replace("/tmp/", tmp + "/") if a.startswith("/tmp/") else a for a in argv]
  if argv[:1] == ["time"]:
    argv = argv[1:]
  if argv[:3] == ["python3", "-m", "venv"] or argv[:2] == [".venv/bin/pip", "install"]:
    return SETUP
  if argv[:4] == [".venv/bin/python", "-m", "pytest", "-q"]:
    return SETUP     # this very suite
  if argv[:1] == [".venv/bin/tokenlab"]:
    argv = ["tokenlab"] + argv[1:]
  if argv[:1] == ["python"] and argv[1:2] in (["launch/tpu_pod.py"], ["launch/gke.py"],
                                              ["launch/slurm.py"]):
    assert "--dry-run" in argv, f"a launcher command in README must be a --dry-run: {argv}"
    return [sys.executable, os.path.join(REPO, argv[1])] + argv[2:]
  if argv[:2] == ["python", "launch/local.py"]:
    return [sys.executable, os.path.join(REPO, argv[1])] + argv[2:]
  if argv[:1] != ["tokenlab"] or len(argv) < 2:
    raise AssertionError(f"README command the README test does not know how to run: {argv}")
  if _synopsis(argv):
    return SYNOPSIS
  sub = argv[1]
  if sub == "repro":   # one quick seed: --quick added, --seeds N made 1
    argv = [("1" if i and argv[i - 1] == "--seeds" else a) for i, a in enumerate(argv)]
    extra = ([] if "--quick" in argv else ["--quick"]) + (
        [] if "--workdir" in argv else ["--workdir", os.path.join("runs", "repro", argv[2])])
    return argv + extra
  if sub == "eval":
    return argv + ["--batches", "2"]
  if sub == "sample":
    return argv + ["--num", "1"]
  if argv[1:3] == ["bench", "decode"]:
    return argv + ["--d-model", "32", "--num-layers", "1", "--length", "24", "--prompt", "8",
                   "--peer-steps", "2", "--repeats", "1"]
  if sub in ("train", "plot", "plan", "data", "grow", "scale"):
    return argv
  if argv[1:3] == ["bench", "trainer"]:
    return argv + ["--steps", "2", "--log-every", "1"]
  raise AssertionError(f"README command the README test does not know how to shrink: {argv}")


def _check_synopsis(argv: list[str], env: dict) -> None:
  sub = argv[1]
  helptext = subprocess.run([os.path.join(BIN, "tokenlab"), sub, "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
  assert helptext.returncode == 0, (argv, helptext.stderr[-1000:])
  for flag in (a.strip("[]") for a in argv[2:] if a.strip("[]").startswith("--")):
    assert flag in helptext.stdout, f"README shows {flag} for `tokenlab {sub}`; --help has not"


def _env() -> dict:
  return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
              TOKENLAB_CONFIG_OVERRIDES=SHRINK, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def run_all(commands: list[tuple[list[str], list[str]]], tmp_path) -> int:
  """Runs `commands` in order in tmp_path (see the module docstring); returns how many ran."""
  env = _env()
  if not (tmp_path / "launch").exists():
    os.symlink(os.path.join(REPO, "launch"), tmp_path / "launch")
  done = set()
  for argv, shown in commands:
    run = _shrink(argv, str(tmp_path))
    key = tuple(argv) if run is SYNOPSIS or run is SETUP else tuple(run)
    if run is SETUP or key in done:   # the same command (once shrunk) runs once
      continue
    done.add(key)
    if run is SYNOPSIS:
      _check_synopsis(argv, env)
      continue
    if run[0] == "tokenlab":
      run = [os.path.join(BIN, "tokenlab")] + run[1:]
    proc = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, f"{shlex.join(argv)}:\n{output[-3000:]}"
    if shown:   # a transcript: its output as shown, its exit status as the output implies
      for line in shown:
        assert line in output, f"{shlex.join(argv)}: README shows {line!r}; got\n{output}"
      assert proc.returncode == (2 if any("error:" in l for l in shown) else 0)
    else:
      assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n" \
                                   f"{output[-3000:]}"
  return len(done)


def test_every_readme_command_runs(tmp_path):
  with open(os.path.join(REPO, "README.md")) as f:
    commands = readme_commands(f.read())
  assert run_all(commands, tmp_path) > 10


def help_examples() -> list[tuple[list[str], list[str]]]:
  """The `tokenlab ...` example lines of `tokenlab --help` and of each subcommand's --help."""
  from tokenlab.cli import build_parser
  texts = [build_parser().format_help()]
  for sub in ("train", "eval", "sample", "plot", "data", "plan", "scale", "repro", "grow",
              "bench"):
    out = subprocess.run([os.path.join(BIN, "tokenlab"), sub, "--help"], env=_env(),
                         capture_output=True, text=True, timeout=120)
    texts.append(out.stdout)
  commands = []
  for text in texts:
    text = re.sub(r"\\\n\s*", " ", text)
    for line in text.splitlines():
      if line.strip().startswith("tokenlab ") and not line.startswith("usage"):
        commands.append((shlex.split(line.strip(), comments=True), []))
  return commands


def test_every_help_example_runs(tmp_path):
  commands = help_examples()
  assert len(commands) >= 15
  assert run_all(commands, tmp_path) >= 12


def test_readme_parser_and_shrink_table():
  text = """intro `tokenlab repro NAME` and `time tokenlab train --workdir /tmp/x`
```bash
python3 -m venv .venv && .venv/bin/tokenlab train --workdir runs/d
tokenlab plot runs/lm   # comment
tokenlab sample --workdir runs/a \\
    --prompt "def "
```
```
$ tokenlab train --config.train.stepz=3
tokenlab: error: unknown
```
"""
  cmds = readme_commands(text)
  assert [c for c, _ in cmds] == [
      ["tokenlab", "repro", "NAME"], ["time", "tokenlab", "train", "--workdir", "/tmp/x"],
      ["python3", "-m", "venv", ".venv"], [".venv/bin/tokenlab", "train", "--workdir", "runs/d"],
      ["tokenlab", "plot", "runs/lm"], ["tokenlab", "sample", "--workdir", "runs/a", "--prompt",
                                         "def "],
      ["tokenlab", "train", "--config.train.stepz=3"]]
  assert cmds[-1][1] == ["tokenlab: error: unknown"]
  assert _shrink(cmds[0][0], "/t") is SYNOPSIS and _shrink(cmds[2][0], "/t") is SETUP
  assert _shrink(cmds[1][0], "/t") == ["tokenlab", "train", "--workdir", "/t/x"]
  assert _shrink(["tokenlab", "repro", "hnet"], "/t")[-3:] == [
      "--quick", "--workdir", "runs/repro/hnet"]
  with pytest.raises(AssertionError, match="does not know"):
    _shrink(["rm", "-rf", "runs"], "/t")
  with pytest.raises(AssertionError, match="does not know"):
    _shrink(["tokenlab", "frobnicate", "x"], "/t")
  with pytest.raises(AssertionError, match="--dry-run"):
    _shrink(["python", "launch/tpu_pod.py", "--name", "x"], "/t")
