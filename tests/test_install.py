"""A normal (non-editable) install works from any directory: wheel -> fresh venv -> commands.

The wheel is built from this checkout and installed with --no-deps into a fresh venv whose
only other packages are this test environment's dependencies (a .pth file adds their
site-packages; .pth files there, such as the editable tokenlab's finder, are not run). So
what is checked is the wheel itself: its package data (experiments, the pysrc snapshot), its
console script and `python -m tokenlab`; dependency resolution is what CI's own install checks.
"""

import os
import site
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("install")
  # Without PYTHONPATH: a checkout on it (with the egg-info the wheel build leaves there)
  # would make pip think tokenlab is already installed in the new venv.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(tmp / "dist"), REPO], check=True, capture_output=True, timeout=300,
                 env=env)
  wheel = next((tmp / "dist").glob("tokenlab-*.whl"))
  venv = tmp / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  py = venv / "bin" / "python"
  purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], check=True, capture_output=True,
                           text=True).stdout.strip()
  deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
  with open(os.path.join(purelib, "_tokenlab_test_deps.pth"), "w") as f:
    f.write("\n".join(deps) + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                  "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300,
                 env=env)
  empty = tmp / "elsewhere"
  empty.mkdir()
  return venv, empty


def _run(venv, cwd, *args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=("--xla_force_host_platform_device_count=1 "
                                             + os.environ["TOKENLAB_TEST_COMPILE_FLAGS"]),
             PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
  return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_wheel_installs_and_runs_from_an_empty_directory(installed):
  venv, empty = installed
  # The installed package, not this checkout, answers.
  out = _run(venv, empty, str(venv / "bin" / "python"), "-c",
             "import tokenlab, os; print(os.path.dirname(tokenlab.__file__))")
  assert out.returncode == 0 and str(venv) in out.stdout, out.stderr[-2000:]
  out = _run(venv, empty, str(venv / "bin" / "python"), "-m", "tokenlab", "--help")
  assert out.returncode == 0 and "train" in out.stdout and "repro" in out.stdout
  # The default experiment (shipped inside the wheel), 2 steps, output to a pipe.
  out = _run(venv, empty, str(venv / "bin" / "tokenlab"), "train", "--config.train.steps=2",
             "--config.train.eval_batches=1", "--workdir", "X")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert (empty / "X" / "config.json").exists() and (empty / "X" / "metrics.jsonl").exists()
  # Not a terminal: plain lines, no carriage-return progress bar.
  assert "\r" not in out.stdout + out.stderr and "train: step 2/2" in out.stderr
  out = _run(venv, empty, str(venv / "bin" / "tokenlab"), "repro", "byte_probs", "--quick",
             "--workdir", "R")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert (empty / "R" / "repro.json").exists()
  assert not (empty / "experiments").exists()
