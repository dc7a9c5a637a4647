"""Bad inputs end in one clear line (exit 2, no traceback) and leave the workdir untouched.

Each probe runs through the CLI in this process; the workdir's files are hashed before and
after. (The reliability record is the table in BUILD_NOTES.md, "Bad inputs and faults".)
"""

import hashlib
import json
import os

import pytest

from tokenlab.cli import main

EXP = "experiments/transformer_lm.py:size=tiny"
SMALL = ["--config.train.steps=2", "--config.train.eval_batches=1", "--config.train.progress=false",
         "--config.checkpoint.async_save=false"]


def _snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("bad") / "run")
  assert main(["train", "--config", EXP, "--workdir", workdir, *SMALL]) == 0
  return workdir


def _refused(capsys, argv, match):
  assert main(argv) == 2
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("tokenlab: error: "), err
  assert "Traceback" not in err and match in lines[0], lines[0]


@pytest.mark.parametrize("override,match", [
    ("--config.checkpoint.keep=0", "would delete every checkpoint"),
    ("--config.train.steps=0", "config.train.steps=0 must be a positive integer"),
    ("--config.train.batch_size=0", "config.train.batch_size=0"),
    ("--config.checkpoint.every_steps=0", "config.checkpoint.every_steps=0"),
    ("--config.train.log_every=0", "config.train.log_every=0"),
    ("--config.optimizer.lr=-0.1", "config.optimizer.lr=-0.1 must be >= 0"),
    ("--config.optimizer.name=adamm", "unknown config.optimizer.name='adamm'"),
    ("--config.optimizer.schedule=cosin", "unknown config.optimizer.schedule='cosin'"),
    ("--config.train.compute_dtype=bfloat17", "'bfloat17' is not a floating dtype"),
    ("--config.train.init_from=/nonexistent/run", "has no checkpoints/ directory"),
])
def test_bad_config_is_refused_before_the_workdir_is_touched(trained, capsys, override, match):
  before = _snapshot(trained)
  _refused(capsys, ["train", "--config", EXP, "--workdir", trained, *SMALL, override], match)
  assert _snapshot(trained) == before


def test_bad_config_in_a_new_workdir_writes_nothing(tmp_path, capsys):
  workdir = tmp_path / "new"
  _refused(capsys, ["train", "--config", EXP, "--workdir", str(workdir), *SMALL,
                    "--config.train.batch_size=0"], "batch_size=0")
  assert not workdir.exists()
  # The corrected command then runs (nothing was left behind to call it "a different config").
  assert main(["train", "--config", EXP, "--workdir", str(workdir), *SMALL]) == 0


def test_resume_below_the_checkpoint_and_workdir_that_is_a_file(trained, tmp_path, capsys):
  before = _snapshot(trained)
  _refused(capsys, ["train", "--config", EXP, "--workdir", trained, *SMALL[1:],
                    "--config.train.steps=1"], "is at step 2, past config.train.steps=1")
  assert _snapshot(trained) == before
  afile = tmp_path / "afile"
  afile.write_text("x")
  _refused(capsys, ["train", "--config", EXP, "--workdir", str(afile), *SMALL],
           "is a file, not a directory")
  _refused(capsys, ["train", "--config", EXP, "--workdir", str(afile / "sub"), *SMALL],
           "is a file, not a directory")
  assert afile.read_text() == "x"


def test_failed_resume_force_keeps_config_json(trained, capsys):
  before = _snapshot(trained)
  with open(os.path.join(trained, "config.json")) as f:
    original = json.load(f)
  # A different model under resume=force: the checkpoint cannot restore into it.
  assert main(["train", "--config", EXP, "--workdir", trained, *SMALL, "--config.resume=force",
               "--config.model.d_model=48"]) == 2
  capsys.readouterr()
  with open(os.path.join(trained, "config.json")) as f:
    assert json.load(f) == original
  assert _snapshot(trained) == before
  # The original command still resumes (a finished run: nothing left to train).
  assert main(["train", "--config", EXP, "--workdir", trained, *SMALL]) == 0


def test_finished_run_resumed_reports_its_last_metrics(trained):
  """Resuming a finished run runs no step or eval; it still returns what the run logged (the
  reproductions reuse finished arms through this)."""
  from tokenlab.config import load_config
  from tokenlab.train.loop import train
  out = train(load_config(EXP, SMALL), trained)
  assert out["step"] == 2 and "eval/loss" in out and "train/loss" in out
