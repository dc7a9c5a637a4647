"""README as a tested contract: every command it shows runs as written (shrunk to tiny runs).

Commands come from README.md's ```bash blocks (continuation lines joined, `&&` chains split),
from transcript blocks (lines starting with `$ `, whose shown output must appear), and from
inline `tokenlab ...` quotes. They run in order, in one temporary directory, with
$TOKENLAB_CONFIG_OVERRIDES shrinking every training run to a couple of steps (and an
experiment's size=small to size=tiny):
README keeps showing the real commands. How each kind of command is shrunk is the table
`_shrink` below; a command it does not know fails the test, so a new command cannot land in
README untested. A synopsis (`tokenlab repro NAME`, `tokenlab plan`) is checked against the
subcommand's --help: the subcommand exists and knows every flag shown.

Each test runs its commands in one child process (one CPU device, as on a laptop) that calls
`tokenlab.cli.main` (the function the installed `tokenlab` script calls) for each `tokenlab`
command, so they share one JAX start-up and one compilation cache instead of paying for a
process each; the installed script itself is run by tests/test_install.py and
tests/test_cli.py. Launcher scripts run as subprocesses of that child.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SHRINK = ("train.steps=2 train.eval_batches=1 train.eval_every=0 train.log_every=1 "
          "checkpoint.every_steps=2 checkpoint.async_save=false")
SETUP = object()   # README's own set-up steps, already done by whoever runs this suite
SYNOPSIS = object()
REPRO = object()   # `tokenlab repro NAME ...`: see _check_repro


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
  if sub == "repro":
    return REPRO
  if sub == "eval":
    return argv + ["--batches", "2"]
  if sub == "sample":
    return argv + ["--num", "1"]
  if argv[1:3] == ["bench", "decode"]:
    return argv + ["--d-model", "32", "--num-layers", "1", "--length", "24", "--prompt", "8",
                   "--peer-steps", "2", "--repeats", "1"]
  if sub == "scale":   # one point of each sweep, two steps
    out = []
    for i, a in enumerate(argv):
      if i and argv[i - 1] == "--steps":
        a = "2"
      elif i and argv[i - 1] == "--sweep":
        key, values = a.split("=", 1)
        # the tiny model on a 4-chip slice: the README's real sizes compile for minutes
        first = {"size": "tiny", "model.size": "tiny", "topology": "v5e:2x2"}.get(
            key, values.split(",")[0])
        a = f"{key}={first}"
      out.append(a)
    return out
  if sub == "plan" and "--topology" in argv:   # a 4-chip slice, the tiny model by default
    argv = [("v5e:2x2" if i and argv[i - 1] == "--topology" else a) for i, a in enumerate(argv)]
    return argv + ([] if "--config" in argv else
                   ["--config", "experiments/transformer_lm.py:size=tiny"])
  if sub == "plan":   # a 1b model's step compiles for ~20 s on CPU: the small one shows the same
    argv = [re.sub(r"([:,]size=)(1b|base)\b", r"\1small", a) if a.startswith("experiments/")
            else a for a in argv]
  if sub == "train":   # README's size=small runs train at size=tiny (compiles are most of it)
    return [re.sub(r"([:,]size=)small\b", r"\1tiny", a) if a.startswith("experiments/") else a
            for a in argv]
  if sub in ("plot", "plan", "data", "grow", "tokenizer-report"):
    return argv
  if sub == "transfer":   # two adaptation steps, embeddings only (argparse: the last flag wins)
    return argv + ["--steps", "2", "--mode", "embeddings"]
  if argv[1:3] == ["bench", "clear_attention"]:
    return argv + ["--grids", "4,8", "--radius", "2", "--d-model", "16", "--heads", "2",
                   "--repeats", "1", "--cases", "forward"]
  if argv[1:3] == ["bench", "gpu"]:   # needs a GPU; tests/test_bench_gpu.py runs --smoke
    return argv + ["--help"]
  if argv[1:3] == ["bench", "trainer"]:
    return argv + ["--steps", "2", "--log-every", "1", "--peak-size", "256"] + (
        [] if "--config" in argv else ["--config", "experiments/transformer_lm.py:size=tiny"])
  raise AssertionError(f"README command the README test does not know how to shrink: {argv}")


def _check_synopsis(argv: list[str]) -> None:
  sub = argv[1]
  code, helptext = _tokenlab([sub, "--help"])
  assert code == 0, (argv, helptext[-1000:])
  for flag in (a.strip("[]") for a in argv[2:] if a.strip("[]").startswith("--")):
    assert flag in helptext, f"README shows {flag} for `tokenlab {sub}`; --help has not"


def _check_repro(argv: list[str]) -> None:
  """`tokenlab repro NAME [flags]`: NAME is a reproduction, the flags parse, and its quick run
  is a test of tests/test_NAME.py.

  The quick run itself is not repeated here: `tokenlab repro` is `tokenlab.repro.run`, which
  each method's test_repro_quick calls, and tests/test_install.py runs `tokenlab repro
  byte_probs --quick` through the installed script.
  """
  from tokenlab import repro  # pylint: disable=g-import-not-at-top
  name = argv[2]
  assert name in repro.names(), f"README shows `tokenlab repro {name}`: no such reproduction"
  code, helptext = _tokenlab(["repro", "--help"])
  assert code == 0, helptext
  for flag in (a for a in argv[3:] if a.startswith("--")):
    assert flag.split("=")[0] in helptext, f"README shows {flag} for `tokenlab repro`"
  with open(os.path.join(REPO, "tests", f"test_{name}.py")) as f:
    assert re.search(rf"def test_repro_quick\(.*?repro\.run\(\"{name}\".*?quick=True", f.read(),
                     re.S), f"tests/test_{name}.py has no test_repro_quick running {name}"


def _tokenlab(args: list[str]) -> tuple[int, str]:
  """Runs `tokenlab ARGS` in this process; returns (exit status, stdout + stderr).

  An exception escaping `main` fails the test with its traceback, which is what a traceback
  printed by the installed script would mean.
  """
  from tokenlab.cli import main  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
      code = main(args)
    except SystemExit as e:   # argparse's usage errors and --help
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  return code, out.getvalue()


def _env() -> dict:
  return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
              TOKENLAB_CONFIG_OVERRIDES=SHRINK, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1 "
              + os.environ["TOKENLAB_TEST_COMPILE_FLAGS"])   # as tests/conftest.py: faster compiles


def run_all(commands: list[tuple[list[str], list[str]]], tmp_path) -> int:
  """Runs `commands` in order in tmp_path (see the module docstring); returns how many ran.

  Changes this process's working directory and environment: call it in a child process
  (`_in_child`).
  """
  from tokenlab.repro import compile_cache  # pylint: disable=g-import-not-at-top
  os.chdir(tmp_path)
  os.environ["TOKENLAB_CONFIG_OVERRIDES"] = SHRINK
  if not (tmp_path / "launch").exists():
    os.symlink(os.path.join(REPO, "launch"), tmp_path / "launch")
  # Commands that train the same configuration (README trains the default experiment twice)
  # load its compiled programs instead of compiling them again; the test session's cache
  # (tests/conftest.py) also shares them with the help examples and the install test.
  with compile_cache(os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path / "jax_cache")):
    return _run_all(commands, tmp_path)


def _run_all(commands: list[tuple[list[str], list[str]]], tmp_path) -> int:
  env = _env()
  done = set()
  for argv, shown in commands:
    run = _shrink(argv, str(tmp_path))
    key = tuple(argv) if run in (SYNOPSIS, SETUP, REPRO) else tuple(run)
    if run is SETUP or key in done:   # the same command (once shrunk) runs once
      continue
    done.add(key)
    if run is SYNOPSIS:
      _check_synopsis(argv)
      continue
    if run is REPRO:
      _check_repro(argv)
      continue
    t0 = time.perf_counter()
    if run[0] == "tokenlab":
      code, output = _tokenlab(run[1:])
    else:
      proc = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
      code, output = proc.returncode, proc.stdout + proc.stderr
    # What each command costs (the suite's time budget): printed, shown with -s or on failure.
    print(f"{time.perf_counter() - t0:7.1f} s  {shlex.join(argv)}", file=sys.stderr, flush=True)
    assert "Traceback" not in output, f"{shlex.join(argv)}:\n{output[-3000:]}"
    if shown:   # a transcript: its output as shown, its exit status as the output implies
      for line in shown:
        assert line in output, f"{shlex.join(argv)}: README shows {line!r}; got\n{output}"
      assert code == (2 if any("error:" in l for l in shown) else 0)
    else:
      assert code == 0, f"{shlex.join(argv)} exited {code}:\n{output[-3000:]}"
  return len(done)


def _in_child(which: str, tmp_path, at_least: int) -> None:
  """Runs the `which` commands ('readme' or 'help') in a child process (see module docstring)."""
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), which, str(tmp_path)],
                        env=_env(), capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  sys.stderr.write("".join(l for l in proc.stderr.splitlines(True) if " s  " in l))
  ran = int(proc.stdout.strip().splitlines()[-1])
  assert ran >= at_least, f"only {ran} {which} commands ran"


def _child_main(which: str, tmp: str) -> None:
  import pathlib  # pylint: disable=g-import-not-at-top
  if which == "readme":
    with open(os.path.join(REPO, "README.md")) as f:
      commands = readme_commands(f.read())
  else:
    commands = help_examples()
    assert len(commands) >= 15, commands
  print(run_all(commands, pathlib.Path(tmp)))


def test_every_readme_command_runs(tmp_path):
  _in_child("readme", tmp_path, at_least=11)


def help_examples() -> list[tuple[list[str], list[str]]]:
  """The `tokenlab ...` example lines of `tokenlab --help` and of each subcommand's --help."""
  from tokenlab.cli import build_parser
  parser = build_parser()
  texts = [parser.format_help()]
  # Every subcommand the parser has: a new one cannot land with an untested example.
  for sub in parser._subparsers._group_actions[0].choices:
    code, text = _tokenlab([sub, "--help"])
    assert code == 0, text
    texts.append(text)
  commands = []
  for text in texts:
    text = re.sub(r"\\\n\s*", " ", text)
    for line in text.splitlines():
      if line.strip().startswith("tokenlab ") and not line.startswith("usage"):
        commands.append((shlex.split(line.strip(), comments=True), []))
  return commands


def test_every_help_example_runs(tmp_path):
  _in_child("help", tmp_path, at_least=12)


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
  assert _shrink(["tokenlab", "train", "--config", "experiments/caft.py:size=small,stage=x"],
                 "/t") == ["tokenlab", "train", "--config", "experiments/caft.py:size=tiny,stage=x"]
  assert _shrink(["tokenlab", "repro", "hnet"], "/t") is REPRO
  _check_repro(["tokenlab", "repro", "hnet", "--seeds", "3"])
  with pytest.raises(AssertionError, match="no such reproduction"):
    _check_repro(["tokenlab", "repro", "frobnicate"])
  assert _shrink(["tokenlab", "scale", "--sweep", "mesh.data=1,2,4", "--steps", "20"], "/t") == [
      "tokenlab", "scale", "--sweep", "mesh.data=1", "--steps", "2"]
  assert _shrink(["tokenlab", "scale", "--sweep", "topology=v5e:4x4,v5e:4x8", "--sweep",
                  "size=base,1b"], "/t") == ["tokenlab", "scale", "--sweep", "topology=v5e:2x2",
                                             "--sweep", "size=tiny"]
  assert _shrink(["tokenlab", "plan", "--config", "experiments/transformer_lm.py:size=1b",
                  "--devices", "16"], "/t") == [
      "tokenlab", "plan", "--config", "experiments/transformer_lm.py:size=small", "--devices", "16"]
  assert _shrink(["tokenlab", "plan", "--topology", "v5e:16x16"], "/t") == [
      "tokenlab", "plan", "--topology", "v5e:2x2", "--config",
      "experiments/transformer_lm.py:size=tiny"]
  with pytest.raises(AssertionError, match="does not know"):
    _shrink(["rm", "-rf", "runs"], "/t")
  with pytest.raises(AssertionError, match="does not know"):
    _shrink(["tokenlab", "frobnicate", "x"], "/t")
  with pytest.raises(AssertionError, match="--dry-run"):
    _shrink(["python", "launch/tpu_pod.py", "--name", "x"], "/t")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  _child_main(sys.argv[1], sys.argv[2])
