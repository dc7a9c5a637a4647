"""Bad inputs end in one clear line (exit 2, no traceback) and leave the workdir untouched;
faults (a damaged checkpoint, a second training, a killed one, a read-only checkpoints/, a
partial metrics line) end in the documented fallback.

Each probe runs through the CLI in this process (a subprocess only for the workdir lock); the
workdir's files are hashed before and after. All probes share one tiny trained workdir,
copied where a probe may change it. (The reliability record is the table in BUILD_NOTES.md,
"Bad inputs and faults".)
"""

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

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
  """A finished 2-step run with checkpoints at steps 1 and 2."""
  workdir = str(tmp_path_factory.mktemp("bad") / "run")
  assert main(["train", "--config", EXP, "--workdir", workdir, *SMALL,
               "--config.checkpoint.every_steps=1"]) == 0
  return workdir


def _copy(trained, tmp_path, name="run"):
  return shutil.copytree(trained, str(tmp_path / name))


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
    ("--config.train.param_dtype=flaot32", "'flaot32' is not a floating dtype"),
    ("--config.checkpoint.keep=-1", "config.checkpoint.keep=-1 must be a positive integer"),
    ("--config.train.max_skipped_fraction=1.5", "max_skipped_fraction=1.5 must be a fraction"),
    ("--config.model.vocab_size=100", "config.model.vocab_size=100 is smaller than the "
     "vocabulary of config.data.tokenizer='bytes' (256 ids)"),
    ("--config.data.data_dir=/etc/hostname", "/etc/hostname is a file, not a directory"),
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


# -- item 9 of issue 15: probes that gave tracebacks --------------------------------------

@pytest.mark.parametrize("argv,match", [
    (["eval", "--step", "7"], "has no checkpoint of step 7; it has 1, 2"),
    (["eval", "--batches", "-1"], "--batches -1"),
    (["sample", "--num", "0"], "--num 0"),
    (["sample", "--top-k", "100000"], "--top-k 100000 is larger than the model's vocabulary "
     "(256 tokens)"),
])
def test_eval_and_sample_probes(trained, capsys, argv, match):
  before = _snapshot(trained)
  _refused(capsys, [argv[0], "--workdir", trained, *argv[1:]], match)
  assert _snapshot(trained) == before


def test_sample_takes_a_prompt_that_is_not_utf8(trained, capsys):
  """Bytes in, bytes out: the prompt's raw bytes (os.fsencode) are what the model continues."""
  prompt = os.fsdecode(b"\xff\xfe ab")
  assert main(["sample", "--workdir", trained, "--prompt", prompt, "--num", "1",
               "--length", "8", "--temperature", "0"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1].startswith("\ufffd\ufffd ab"), out


def test_experiment_file_with_a_syntax_error(tmp_path, capsys):
  bad = tmp_path / "bad_exp.py"
  bad.write_text("def get_config(arg=None):\n  x = (1,\n  return x\n")
  _refused(capsys, ["train", "--config", str(bad), "--workdir", str(tmp_path / "w"), *SMALL],
           f"{bad}:2:7: SyntaxError: '(' was never closed")
  assert not (tmp_path / "w").exists()


@contextlib.contextmanager
def _read_only(path):
  """`path` made unwritable for this process: chmod for a user, `chattr +i` for root (whom
  permission bits do not stop); skips the test where neither works."""
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    try:
      yield
    finally:
      os.chmod(path, 0o755)
    return
  if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
    pytest.skip("cannot make a directory read-only here (chattr +i failed)")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", path], check=True)


def test_unwritable_workdirs_are_refused(tmp_path, capsys):
  locked = tmp_path / "locked"
  locked.mkdir()
  with _read_only(str(locked)):
    _refused(capsys, ["train", "--config", EXP, "--workdir", str(locked / "run"), *SMALL],
             f"--workdir {locked / 'run'}: ")
    assert not os.listdir(locked)
  _refused(capsys, ["train", "--config", EXP, "--workdir", "/proc/tokenlab_probe/run", *SMALL],
           "--workdir /proc/tokenlab_probe/run: ")


def test_read_only_checkpoints_dir_is_refused_at_start(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  with _read_only(os.path.join(workdir, "checkpoints")):
    _refused(capsys, ["train", "--config", EXP, "--workdir", workdir, *SMALL,
                      "--config.train.steps=3"], "(checkpoints/) is not writable")
  assert _snapshot(workdir) == before


def test_damaged_built_data_is_one_message(trained, tmp_path, capsys):
  from tokenlab.data import storage
  data_dir = tmp_path / "data"
  shutil.copytree(os.path.join(storage.resolve_data_dir(""), "tokenlab_pysrc"),
                  data_dir / "tokenlab_pysrc")
  for path in glob.glob(str(data_dir / "tokenlab_pysrc/*/*/*train.array_record*")):
    with open(path, "r+b") as f:
      f.truncate(100)
  _refused(capsys, ["train", "--config", EXP, "--workdir", str(tmp_path / "w"), *SMALL,
                    f"--config.data.data_dir={data_dir}"], "reading dataset 'pysrc' from")
  assert not (tmp_path / "w").exists()


# -- item 4: a damaged latest checkpoint is skipped, never deleted ---------------------------

def _damage(step_dir, kind):
  arrays = sorted(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*")),
                  key=os.path.getsize)
  if kind == "truncated array file":
    with open(arrays[-1], "r+b") as f:
      f.truncate(os.path.getsize(arrays[-1]) // 2)
  elif kind == "garbled array file":
    with open(arrays[-1], "r+b") as f:
      f.write(b"\xde\xad" * 32)
  elif kind == "empty _METADATA":
    open(os.path.join(step_dir, "state", "_METADATA"), "w").close()
  elif kind == "no commit markers":
    for marker in ("commit_success.txt", "_CHECKPOINT_METADATA"):
      os.remove(os.path.join(step_dir, marker))
  elif kind == "garbled data-iterator state":
    paths = glob.glob(os.path.join(step_dir, "data", "*.json"))   # shard_K-of-S.json
    assert paths
    for path in paths:
      with open(path, "w") as f:
        f.write("{garbage")


# Orbax reads array shards in concurrent coroutines: when one fails, the others' errors are
# only reported when they are garbage-collected, which pytest turns into warnings.
_orbax_read_errors = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")

KINDS = {"truncated array file": "it cannot be read", "garbled array file": "it cannot be read",
         "empty _METADATA": "its metadata cannot be read",
         "no commit markers": "no orbax commit marker",
         "garbled data-iterator state": "it cannot be read"}


@_orbax_read_errors
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_resume_walks_back_over_a_damaged_latest_checkpoint(trained, tmp_path, capsys, kind):
  """The train restore (state and data iterator) falls back to step 1, says why step 2 was
  skipped, and moves step 2 aside byte for byte. (train.steps=1: nothing left to train, so the
  probe costs a restore, not a compile.)"""
  workdir = _copy(trained, tmp_path)
  ckpts = os.path.join(workdir, "checkpoints")
  _damage(os.path.join(ckpts, "2"), kind)
  damaged = _snapshot(os.path.join(ckpts, "2"))
  assert main(["train", "--config", EXP, "--workdir", workdir, *SMALL,
               "--config.train.steps=1"]) == 0
  err = capsys.readouterr().err
  assert f"skipped damaged checkpoint {ckpts}/2 ({KINDS[kind]}" in err, err
  assert "restored step 1" in err and f"moved to {ckpts}.damaged/2 (not deleted)" in err, err
  assert "Traceback" not in err
  assert sorted(os.listdir(ckpts)) == ["1"]
  assert _snapshot(os.path.join(ckpts + ".damaged", "2")) == damaged


def test_no_checkpoint_restores_is_one_message_and_touches_nothing(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  for step in ("1", "2"):
    _damage(os.path.join(workdir, "checkpoints", step), "empty _METADATA")
  before = _snapshot(workdir)
  _refused(capsys, ["train", "--config", EXP, "--workdir", workdir, *SMALL],
           "no checkpoint in")
  assert _snapshot(workdir) == before


@_orbax_read_errors
def test_eval_skips_a_damaged_latest_checkpoint(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  _damage(os.path.join(workdir, "checkpoints", "2"), "truncated array file")
  before = _snapshot(workdir)
  assert main(["eval", "--workdir", workdir, "--batches", "1"]) == 0
  out, err = capsys.readouterr()
  assert out.startswith("step 1, split validation, 1 batches: ")
  assert "skipped damaged checkpoint" in err and "restored step 1" in err
  assert _snapshot(workdir) == before      # eval reads only: the damaged one stays in place
  _refused(capsys, ["eval", "--workdir", workdir, "--step", "2"],
           "--step 2: checkpoint")


@_orbax_read_errors
def test_resume_after_a_damaged_checkpoint_and_a_partial_metrics_line(trained, tmp_path,
                                                                      capsys):
  """Training goes on from the last good checkpoint; the partial line a crash left in
  metrics.jsonl is moved to metrics.jsonl.partial, not appended onto."""
  workdir = _copy(trained, tmp_path)
  _damage(os.path.join(workdir, "checkpoints", "2"), "truncated array file")
  metrics = os.path.join(workdir, "metrics.jsonl")
  with open(metrics, "ab") as f:
    f.write(b'{"step": 3, "train/lo')
  assert main(["train", "--config", EXP, "--workdir", workdir, *SMALL,
               "--config.train.steps=3"]) == 0
  err = capsys.readouterr().err
  assert "restored step 1" in err and "moved a partial last line (21 bytes" in err, err
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "3"]
  assert os.listdir(os.path.join(workdir, "checkpoints.damaged")) == ["2"]
  with open(metrics) as f:
    rows = [json.loads(line) for line in f]      # every line is a complete row again
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 2, 3]
  with open(metrics + ".partial", "rb") as f:
    assert f.read() == b'{"step": 3, "train/lo\n'


def test_plot_skips_a_partial_line_and_keeps_the_last_write_of_a_step(trained, tmp_path,
                                                                     capsys):
  from tokenlab.plotting import read_series
  workdir = _copy(trained, tmp_path)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 2, "train/loss": 9.5, "train/grad_norm": null, '
            '"nonfinite": {"train/grad_norm": "nan"}}\n{"step": 3, "train/lo')
  assert main(["plot", workdir]) == 0
  err = capsys.readouterr().err
  assert "skipped 1 line(s) that are not complete rows (line " in err, err
  loss = read_series(workdir)["train/loss"]
  assert [s for s, _ in loss] == [1, 2] and loss[-1] == (2, 9.5)
  assert [s for s, _ in read_series(workdir)["train/grad_norm"]] == [1]  # null is left out


# -- item 8: the workdir lock ----------------------------------------------------------------

def test_second_training_is_refused_and_a_killed_one_does_not_block(trained, tmp_path, capsys):
  """A training holds WORKDIR/train.lock: a second one in the same workdir is refused naming
  its pid and host. After SIGKILL the lock file is left behind, yet the next run starts."""
  workdir = _copy(trained, tmp_path)
  lock = os.path.join(workdir, "train.lock")
  with open(tmp_path / "first.err", "w") as err:
    first = subprocess.Popen(
        [sys.executable, "-m", "tokenlab.cli", "train", "--config", EXP, "--workdir", workdir,
         *SMALL, "--config.train.steps=100000", "--config.checkpoint.every_steps=100000",
         "--config.train.log_every=100000", "--config.train.eval_every=0"],
        stdout=subprocess.DEVNULL, stderr=err)
  try:
    deadline, held = time.time() + 180, False
    while not held and time.time() < deadline and first.poll() is None:
      with contextlib.suppress(OSError, ValueError, KeyError):
        with open(lock) as f:
          held = json.load(f)["pid"] == first.pid
      time.sleep(0.05)
    assert held and first.poll() is None, (tmp_path / "first.err").read_text()[-2000:]
    _refused(capsys, ["train", "--config", EXP, "--workdir", workdir, *SMALL],
             f"is in use by another training (pid {first.pid} on host "
             f"{socket.gethostname()}, since ")
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert first.returncode == -signal.SIGKILL
  assert os.path.exists(lock)   # what a killed run leaves behind
  assert main(["train", "--config", EXP, "--workdir", workdir, *SMALL]) == 0
  assert f"was left by pid {first.pid}" in capsys.readouterr().err
  assert not os.path.exists(lock)
