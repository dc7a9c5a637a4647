"""The command line: user mistakes end in one line naming the fix, never a traceback."""

import os
import subprocess
import sys

import pytest

EXP = "experiments/transformer_lm.py:size=tiny"


def _run(*args, devices=4):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             + os.environ["TOKENLAB_TEST_COMPILE_FLAGS"],
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


# Every subcommand: a misspelled flag exits 2 with one line naming the nearest valid flag.
@pytest.mark.parametrize("argv,nearest_flag", [
    (["train", "--wrkdir", "x"], "--workdir"),
    (["eval", "--workdir", "x", "--splt", "train"], "--split"),
    (["sample", "--workdir", "x", "--temprature", "0.1"], "--temperature"),
    (["sample", "--workdir", "x", "--top_kk", "3"], "--top-k"),
    (["plot", "x", "--logy"], None),
    (["data", "show", "pysrc", "--nm", "3"], "--num"),
    (["plan", "--devics", "8"], "--devices"),
    (["scale", "--stps", "3"], "--steps"),
    (["repro", "--quik"], "--quick"),
    (["grow", "src", "--workdir", "x", "--factr", "2"], "--factor"),
    (["bench", "trainer", "--stpes", "3"], "--steps"),
    (["bench", "decode", "--d-modl", "3"], "--d-model"),
    (["bench", "windowed_attention", "--reapeats", "3"], "--repeats"),
    (["bench", "token_merge", "--repets", "3"], "--repeats"),
])
def test_unknown_flag_is_one_line_with_nearest(capsys, argv, nearest_flag):
  from tokenlab.cli import main
  assert main(argv) == 2
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("tokenlab: error: "), err
  assert "unknown flag" in lines[0] or "unrecognised" in lines[0], err
  if nearest_flag:
    assert f"did you mean '{nearest_flag}'" in lines[0], err


def test_flag_aliases_and_space_form_overrides():
  from tokenlab.argparsing import Parser
  from tokenlab.config import split_overrides
  p = Parser(prog="t")
  p.add_argument("--top_k", type=int, default=0)
  assert p.parse_args(["--top_k", "3"]).top_k == 3 and p.parse_args(["--top-k=4"]).top_k == 4
  assert "--top-k" in p.format_help() and "--top_k" not in p.format_help()
  assert split_overrides(["--config.train.steps", "3", "--config.seed=1"]) == [
      "--config.train.steps=3", "--config.seed=1"]
  from tokenlab.errors import TokenlabError
  with pytest.raises(TokenlabError, match="has no value"):
    split_overrides(["--config.train.steps"])


def test_help_of_every_subcommand_says_what_options_and_example(capsys):
  from tokenlab.cli import main
  for cmd in ("train", "eval", "sample", "plot", "data", "plan", "scale", "repro", "grow",
              "bench"):
    with pytest.raises(SystemExit) as e:
      main([cmd, "--help"]) and None
      raise SystemExit(0)   # bench prints its usage and returns
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "example" in out.lower(), (cmd, out)
  with pytest.raises(SystemExit):
    main(["train", "--help"])
  assert "--config.a.b=value" in capsys.readouterr().out


def test_shipped_experiments_resolve_from_any_directory(tmp_path, monkeypatch):
  from tokenlab.config import load_config, resolve_experiment, shipped_experiments
  from tokenlab.errors import TokenlabError
  monkeypatch.chdir(tmp_path)
  assert "hnet.py" in shipped_experiments()
  for spec in ("experiments/hnet.py:size=tiny", "hnet.py:size=tiny", "hnet:size=tiny"):
    path, _, arg = resolve_experiment(spec).partition(":")
    assert os.path.isfile(path) and arg == "size=tiny"
  assert load_config("experiments/transformer_lm.py:size=tiny").model.name == "transformer_lm"
  # A user's own file of the same relative name wins over the shipped one.
  (tmp_path / "experiments").mkdir()
  (tmp_path / "experiments" / "hnet.py").write_text("# mine\n")
  assert resolve_experiment("experiments/hnet.py") == "experiments/hnet.py"
  with pytest.raises(TokenlabError, match="did you mean 'hnet.py'"):
    resolve_experiment("experiments/hnett.py")


def test_progress_is_plain_lines_when_not_a_terminal():
  import io
  from tokenlab.train.progress import Progress
  stream = io.StringIO()
  p = Progress(total=4, stream=stream)
  assert p.bar is None
  p.update()
  p.log(2, {"train/loss": 1.5, "perf/tokens_per_sec": 100.0, "perf/mfu": 0.1})
  p.write("eval at step 2: eval/loss=1.4")
  p.close()
  text = stream.getvalue()
  assert "\r" not in text
  assert text.splitlines()[0].startswith("train: step 2/4, loss 1.5000, 100 tokens/s")
  assert text.splitlines()[1] == "eval at step 2: eval/loss=1.4"


def test_no_tpu_attached_means_cpu_without_libtpu_start_up():
  """The test extra installs libtpu; on a machine with no TPU (or GPU) device node, the
  command line picks CPU itself instead of letting jax start the TPU runtime, unless
  JAX_PLATFORMS was set by the user."""
  import glob
  import subprocess
  import sys
  code = ("import os, sys\nfrom tokenlab import cli\nassert 'jax' not in sys.modules\n"
          "cli._skip_absent_tpu()\nprint(os.environ.get('JAX_PLATFORMS'))")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  attached = glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*") + glob.glob(
      "/dev/nvidia[0-9]*")
  assert out.stdout.strip() == ("None" if attached else "cpu")
  out = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cuda"),
                       capture_output=True, text=True, timeout=60)
  assert out.stdout.strip() == "cuda"
