"""The command line: user mistakes end in one line naming the fix, never a traceback."""

import os
import subprocess
import sys

import pytest

EXP = "experiments/transformer_lm.py:size=tiny"


def _run(*args, devices=4):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "tokenlab.cli", *args], env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra,expected", [
    (["--config.train.stepz=3"], "did you mean 'train.steps'"),
    (["--config.train.batch_size=6", "--config.mesh.data=4"],
     "not divisible by the data-parallel mesh axes"),
    (["--config.data.name=pysrcc"], "unknown dataset 'pysrcc' (did you mean 'pysrc'?)"),
    (["--config.mesh.data=3"], "uses 3 devices but 4 are available"),
])
def test_user_errors_are_one_line(tmp_path, extra, expected):
  out = _run("train", "--config", EXP, "--workdir", str(tmp_path / "w"), *extra)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("tokenlab: error: "), out.stderr[-2000:]
  assert expected in lines[0]
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "w").exists()  # nothing was written before the error


def test_bench_lists_and_rejects_unknown():
  out = _run("bench", devices=1)
  assert out.returncode == 0 and "trainer" in out.stdout
  out = _run("bench", "trainr", devices=1)
  assert out.returncode == 2 and "did you mean 'trainer'" in out.stderr


def test_object_store_workdir_is_refused_with_the_fix():
  from tokenlab.config import load_config
  from tokenlab.errors import TokenlabError
  from tokenlab.train.loop import check_workdir
  with pytest.raises(TokenlabError, match="gcsfuse"):
    check_workdir(load_config(EXP), "gs://bucket/runs/x")
